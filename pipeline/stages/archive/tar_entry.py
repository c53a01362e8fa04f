"""The tar stage (`imageselector run tar`, kill file KILL_TAR, pause PAUSE_TAR): archives the
bg-removed images of imageall_new/ into tars of archive.images_per_tar, in global-row order
(pipeline/stages/archive/tars.py has the crash-safe protocol)."""
from __future__ import annotations

from pipeline.core.db import queue_depths

# How often a waiting tar stage reads the embedded counter (O(1)) for a full range.
WORK_CHECK_S = 2.0


def add_arguments(parser) -> None:
    parser.add_argument("--rebuild-index", action="store_true",
                        help="rewrite the combined tar_index.json from the per-tar index files and exit")


def nothing_to_do(root, conn, depths: dict) -> bool:
    """The weekly run's drain, once nothing upstream can embed more: tars hold whole ranges
    of images_per_tar rows, so with fewer than that embedded no tar can be written (the rest
    waits for the next run)."""
    return (depths.get("embedded") or 0) < int(root.config.get("archive.images_per_tar"))


def run(ctx) -> int:
    from pipeline.core.diskfloor import DiskFloor
    from pipeline.stages.archive.tarindex import write_combined_index
    from pipeline.stages.archive.tarmembers import TarAborted, TarError
    from pipeline.stages.archive.tars import Archiver

    root = ctx.root
    if getattr(ctx.args, "rebuild_index", False):
        n = write_combined_index(root.tars_dir)
        ctx.log.info("tar_index.json rewritten: %d images", n)
        return 0
    conn = ctx.db()
    arch = Archiver(root, conn, ctx.log)
    floor = DiskFloor(root, [root.tars_dir], stage="tar", conn=ctx.db, log=ctx.log)
    poll_s = float(ctx.config.get("archive.poll_s"))
    per_tar = int(ctx.config.get("archive.images_per_tar"))
    planned_at = {"embedded": -1}

    def full_range_may_be_ready() -> bool:
        # A new image embedded with at least one tar's worth waiting: plan again now,
        # instead of at the end of poll_s.
        embedded = queue_depths(conn).get("embedded") or 0
        return embedded >= per_tar and embedded != planned_at["embedded"]

    between = lambda i: bool(i % 200) or ctx.checkpoint()  # noqa: E731
    while True:
        if not ctx.checkpoint():
            return 0
        why = arch.check_tars_dir()
        if why:
            ctx.blocked(why)
            if ctx.once:
                ctx.set_info(failure=why)
                return 1
            if not ctx.sleep(poll_s):
                return 0
            continue
        ctx.unblocked()
        done = arch.recover()
        if done:
            ctx.log.warning("recovery: %s", done)
        wrote = 0
        planned_at["embedded"] = queue_depths(conn).get("embedded") or 0
        try:
            for plan in arch.next_plans():
                if not ctx.checkpoint():
                    break
                if plan.waiting:
                    ctx.log.info("tar %d waits for %d loose file(s) still missing", plan.number,
                                 len(plan.missing))
                    continue
                if not plan.rows:
                    ctx.log.warning("tar %d: no loose file for any of its %d images", plan.number,
                                    len(plan.missing))
                    continue
                # before a tar, never inside one: below the floor, wait (blocked) for room
                if not floor.wait(ctx):
                    break
                ctx.set_current(f"tar {plan.number}")
                name = arch.write(plan, between=between)
                wrote += 1
                ctx.progress(1, counter="tars", current=name)
                ctx.progress(len(plan.rows), counter="done")
                if plan.missing:
                    ctx.progress(len(plan.missing), counter="missing_files")
                ctx.log.info("%s: %d images archived", name, len(plan.rows))
        except TarAborted:
            ctx.log.info("stopped in the middle of a tar; its partial file was removed")
        except TarError as exc:
            ctx.set_info(failure=str(exc))
            ctx.log.error("%s", exc)
            return 1
        finally:
            if wrote and ctx.config.get("archive.combined_index"):
                write_combined_index(root.tars_dir)
        if ctx.stop_requested() or ctx.once:
            return 0
        ctx.set_current(None)
        if not ctx.sleep_until(poll_s, full_range_may_be_ready, WORK_CHECK_S):
            return 0
