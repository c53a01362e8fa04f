"""The `sync` stage: crawl Etsy into the DB (kill file KILL_SD, pause PAUSE_SD).

Exit status: 0 when every phase of the pass succeeded (or a kill file stopped it cleanly),
1 when a phase failed (its items are retried by the next run), 75 when ``--once`` stopped
for the day's quota (the next run resumes where it stopped). Without ``--once`` a spent
quota blocks the stage until Etsy gives requests again.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--phases", default=None,
                        help="comma-separated phases to run (taxonomy,listings,shops,reviews)")
    parser.add_argument("--threads", type=int, default=None, help="crawl threads (default sync.threads)")


def run(ctx) -> int:
    from pipeline.stages.sync.crawl import Sync
    from pipeline.stages.sync.settings import Settings

    settings = Settings.from_config(ctx.config, ctx.args)
    return Sync(ctx, settings).run()


# Exit statuses that are not failures: the runner records them as "deferred".
RESUMABLE_EXITS = {75: "the day's Etsy quota is spent; the next run resumes where this one stopped"}
