"""The primary stage (`imageselector run primary [--full]`, kill file KILL_PRIMARY): appends
each listing's new or changed primary image to the primary tars (pipeline/stages/archive/primary.py)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--full", action="store_true",
                        help="rebuild every primary tar from scratch (swapped in when complete)")


def run(ctx) -> int:
    from pipeline.core.diskfloor import DiskFloor
    from pipeline.stages.archive.primary import PrimaryUpdater

    full = bool(getattr(ctx.args, "full", False))
    updater = PrimaryUpdater(ctx.root, ctx.db(), ctx.log)
    poll_s = float(ctx.config.get("archive.primary_poll_s"))
    between = lambda i: bool(i % 100) or ctx.checkpoint()  # noqa: E731
    floor = DiskFloor(ctx.root, [ctx.root.primary_dir], stage="primary", conn=ctx.db, log=ctx.log)
    while True:
        if not ctx.checkpoint():
            return 0
        # before a pass writes any primary tar: below the floor, wait (blocked) for room
        if not floor.wait(ctx):
            return 0
        result = updater.update(full=full, between=between)
        ctx.progress(result.added + result.replaced, current=f"{result.tars} primary tars")
        ctx.set_counter("added", result.added)
        ctx.set_counter("replaced", result.replaced)
        ctx.set_counter("skipped", result.skipped)
        ctx.log.info("primary %s: %d added, %d replaced, %d without bytes yet%s",
                     "rebuild" if full else "update", result.added, result.replaced, result.skipped,
                     " (stopped: the rebuild was discarded)" if result.stopped and full else
                     " (stopped)" if result.stopped else "")
        if result.stopped or ctx.once or full:
            return 0
        if not ctx.sleep(poll_s):
            return 0
