"""The `download` stage: fetch every `discovered` image (pipeline/stages/download/downloader.py does the work).

Kill file KILL_DL (or SIGTERM): no new downloads start, running ones get
download.stop_grace_s to finish, then they are released (their images stay `discovered`);
every finished result is committed before the exit. --once: download what is queued, exit 0.
Each run is a pass: it starts by putting the failed downloads whose backoff has passed back to
`discovered` (retry.py; download.failed_retry_after_s, download.failed_retry_passes).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel downloads (default: download.workers, 8)")
    parser.add_argument("--max-in-flight", type=int, default=None, dest="max_in_flight",
                        help="images handed to the workers at once (default: download.max_in_flight)")
    parser.add_argument("--per-host", type=int, default=None, dest="per_host",
                        help="requests at once to one host, 0 for no cap (default: download.per_host)")


def nothing_to_do(root, conn, depths: dict) -> bool:
    """The weekly run's drain: nothing `discovered`, and no failed download that this pass
    will still retry. A pass starts by requeueing the failures due at its start, so those
    count as work until it has (before the stage is up: the ones due now); a failure of this
    pass is due only after it, so it is no work (retry.py)."""
    import time

    from pipeline.core.stage_observe import stage_status
    from pipeline.stages.download.retry import due

    if depths.get("discovered"):
        return False
    status = stage_status(root, "download")
    started = status.get("started") if status.get("pid") else None
    return due(conn, float(started) if started else time.time()) == 0


def run(ctx) -> int:
    from pipeline.core.diskfloor import DiskFloor
    from pipeline.stages.download.downloader import Downloader
    from pipeline.stages.download.settings import Settings

    args = ctx.args
    settings = Settings.from_config(
        ctx.config, workers=getattr(args, "workers", None),
        max_in_flight=getattr(args, "max_in_flight", None),
        per_host=getattr(args, "per_host", None))
    pause_file = ctx.stage.pause_file
    pause_path = ctx.root.file(pause_file) if pause_file else None

    def pause_requested() -> bool:
        return pause_path is not None and pause_path.exists()

    floor = DiskFloor(ctx.root, [ctx.root.download_dir], stage="download", conn=ctx.db,
                      log=ctx.log)
    downloader = Downloader(ctx.db(), ctx.root.download_dir, settings, ctx.log, ctx,
                            pause_requested=pause_requested, floor=floor)
    return downloader.run()
