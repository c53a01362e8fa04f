"""The tar stage (`imageselector run tar`, kill file KILL_TAR, pause PAUSE_TAR): archives the
bg-removed images of imageall_new/ into tars of archive.images_per_tar, in global-row order
(pipeline/stages/archive/tars.py has the crash-safe protocol)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--rebuild-index", action="store_true",
                        help="rewrite the combined tar_index.json from the per-tar index files and exit")


def run(ctx) -> int:
    from pipeline.stages.archive.tarindex import write_combined_index
    from pipeline.stages.archive.tarmembers import TarAborted, TarError
    from pipeline.stages.archive.tars import Archiver

    root = ctx.root
    if getattr(ctx.args, "rebuild_index", False):
        n = write_combined_index(root.tars_dir)
        ctx.log.info("tar_index.json rewritten: %d images", n)
        return 0
    arch = Archiver(root, ctx.db(), ctx.log)
    poll_s = float(ctx.config.get("archive.poll_s"))
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
        if not ctx.sleep(poll_s):
            return 0
