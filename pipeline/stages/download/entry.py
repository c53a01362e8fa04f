"""The `download` stage: fetch every `discovered` image (pipeline/stages/download/downloader.py does the work).

Kill file KILL_DL (or SIGTERM): no new downloads start, running ones get
download.stop_grace_s to finish, then they are released (their images stay `discovered`);
every finished result is committed before the exit. --once: download what is queued, exit 0.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel downloads (default: download.workers, 8)")
    parser.add_argument("--max-in-flight", type=int, default=None, dest="max_in_flight",
                        help="images handed to the workers at once (default: download.max_in_flight)")
    parser.add_argument("--per-host", type=int, default=None, dest="per_host",
                        help="requests at once to one host, 0 for no cap (default: download.per_host)")


def run(ctx) -> int:
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

    downloader = Downloader(ctx.db(), ctx.root.download_dir, settings, ctx.log, ctx,
                            pause_requested=pause_requested)
    return downloader.run()
