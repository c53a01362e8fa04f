"""The backup stage (`imageselector run backup`, kill file KILL_BACKUP): snapshots of data/
to the backup targets (snapshot.py), then the mirrors (mirror.py) and their verification
(verify.py). One round per run; the schedule runs it with `--job NAME` for the targets of that job."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--job", default=None,
                        help="only the targets and mirrors whose `job` is this schedule job")
    parser.add_argument("--only", choices=["all", "snapshot", "mirror"], default="all")
    parser.add_argument("--target", action="append", default=[],
                        help="only this target or mirror (repeatable)")


def run(ctx) -> int:
    import time

    from pipeline.core.alerts import OWN_ALERTS_KEY
    from pipeline.stages.backup.alerting import send_failure
    from pipeline.stages.backup.mirror import mirror
    from pipeline.stages.backup.records import close_interrupted
    from pipeline.stages.backup.snapshot import snapshot
    from pipeline.stages.backup.targets import load_mirrors, load_targets
    from pipeline.stages.backup.verify import verify_mirror

    args = ctx.args
    root = ctx.root
    conn = ctx.db()
    closed = close_interrupted(conn)  # we hold the backup instance lock: nobody owns them
    if closed:
        ctx.log.warning("%d interrupted backup(s) recorded as failed", closed)
    job = getattr(args, "job", None)
    only = getattr(args, "only", "all")
    names = set(getattr(args, "target", []) or [])
    targets = [t for t in load_targets(root) if (job is None or t.job == job)
               and (not names or t.name in names)] if only in ("all", "snapshot") else []
    mirrors = [m for m in load_mirrors(root) if (job is None or m.job == job)
               and (not names or m.name in names)] if only in ("all", "mirror") else []
    known = {t.name for t in load_targets(root)} | {m.name for m in load_mirrors(root)}
    unknown = names - known
    if unknown:
        from pipeline.core.errors import UserError

        raise UserError(f"no backup target or mirror named {', '.join(sorted(unknown))}")
    if not targets and not mirrors:
        ctx.log.info("nothing configured%s: no backup target or mirror",
                     f" for job {job}" if job else "")
        return 0
    failures = []
    alerted: list[str | None] = []

    def failed(out, path, mount) -> None:
        # the stage alerts each failure itself (it knows the target, its path and the fix)
        failures.append(out.error)
        alerted.append(send_failure(root, conn, out, path, mount, log=ctx.log))

    for t in targets:
        if not ctx.checkpoint():
            return 0
        ctx.set_current(f"snapshot {t.name}")
        out = snapshot(root, conn, t, between=ctx.checkpoint, log=ctx.log)
        if out.ok:
            ctx.progress(1, counter="done")
            ctx.set_counter("bytes", out.size or 0)
        elif not ctx.stop_requested():
            failed(out, t.path, t.mount)
    for m in mirrors:
        if not ctx.checkpoint():
            return 0
        ctx.set_current(f"mirror {m.name}")
        started = time.time()
        out = mirror(root, conn, m, log=ctx.log)
        if not out.ok:
            failed(out, m.dest, m.mount)
            continue
        ctx.progress(1, counter="done")
        ver = verify_mirror(root, conn, m, since=started)
        for line in ver.notes:
            ctx.log.info("verify %s: %s", m.name, line)
        if not ver.ok:
            failed(ver, m.dest, m.mount)
    ctx.set_current(None)
    if failures:
        info = {"failure": "; ".join(f for f in failures if f)[:500]}
        if all(alerted):  # every failure has its own alert: the runner and the schedule stay quiet
            info[OWN_ALERTS_KEY] = sorted(set(alerted))
        ctx.set_info(**info)
        return 1
    return 0


def preflight(root, argv: list[str]) -> tuple[list[str], bool]:
    """For the runner, before phase 2: is every destination this step writes to mounted and
    writable? Returns the problems, and whether anything is left to run."""
    import argparse

    from pipeline.stages.backup.targets import BackupError, check_destination, load_mirrors, load_targets

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    args, _ = parser.parse_known_args(argv)
    names = set(args.target or [])
    chosen = []
    if args.only in ("all", "snapshot"):
        chosen += [(t.kind, t.path, t.mount, t.create, f"backup target {t.name}") for t in load_targets(root)
                   if (args.job is None or t.job == args.job) and (not names or t.name in names)]
    if args.only in ("all", "mirror"):
        chosen += [(m.kind, m.dest, m.mount, m.create, f"mirror {m.name}") for m in load_mirrors(root)
                   if (args.job is None or m.job == args.job) and (not names or m.name in names)]
    problems = []
    for kind, path, mount, create, what in chosen:
        try:
            check_destination(kind, path, mount, create, what)
        except BackupError as exc:
            problems.append(str(exc))
    return problems, len(problems) < len(chosen)
