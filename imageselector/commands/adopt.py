"""adopt: take over the original system's DB, index shards, tars and primary tars in place."""
from __future__ import annotations

import json
import logging
import signal
import sys

from imageselector.cli import add_root_argument

EXIT_OK, EXIT_PROBLEMS, EXIT_STOPPED = 0, 1, 3


def _logger(root, quiet: bool) -> logging.Logger:
    log = logging.getLogger("imageselector.adopt")
    log.setLevel(logging.INFO)
    log.propagate = False
    for h in list(log.handlers):
        log.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    root.logs_dir.mkdir(parents=True, exist_ok=True)
    from pipeline.core.stage_log import ReopeningLogHandler

    fh = ReopeningLogHandler(root.log_path("adopt"))
    fh.setFormatter(fmt)
    log.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler(sys.stderr)
        sh.setFormatter(fmt)
        log.addHandler(sh)
    return log


def cmd_adopt(args) -> int:
    from pipeline.adopt import adopt
    from pipeline.core.root import Root

    root = Root.open(args.root)
    stop = {"asked": False}

    def ask_stop(signum, frame):
        stop["asked"] = True

    old = {s: signal.signal(s, ask_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = adopt(root, args.original, dry_run=args.dry_run, quick=args.quick,
                       fingerprint=args.fingerprint, stop=lambda: stop["asked"],
                       log=_logger(root, args.json))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=str))
    else:
        print(report.render_text())
    if report.outcome == "stopped":
        print("imageselector: adoption stopped; run the same command again to resume",
              file=sys.stderr)
        return EXIT_STOPPED
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def cmd_adopt_settings(args) -> int:
    from pipeline.adopt.settings import adopt_settings
    from pipeline.core.root import Root

    root = Root.open(args.root)
    report = adopt_settings(root, args.original_dir, crontab_file=args.crontab, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.to_json(), indent=1, default=str))
    else:
        print(report.render_text())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def _dispatch(args) -> int:
    if getattr(args, "adopt_what", None) == "settings":
        return cmd_adopt_settings(args)
    if not args.original:
        from pipeline.core.errors import UserError

        raise UserError("adopt needs --from ORIGINAL_ROOT (the data) or: adopt settings ORIGINAL_DIR")
    return cmd_adopt(args)


def register(sub) -> None:
    p = sub.add_parser(
        "adopt", help="take over the original system's data in place (no re-crawl, no re-embed)",
        description="Adopt ORIGINAL_ROOT (the original system's folder: data/db/etsy_data.db, "
                    "data/embeddings/shard_NNNN/, images/imagetarred/, images/imageprimary/) "
                    "into this root. The original is only read. Exit 0: adopted (or, with "
                    "--dry-run, nothing to refuse); 1: done, but the report names refused or "
                    "repaired inputs; 2: refused as a whole; 3: stopped (run again to resume).")
    add_root_argument(p)
    p.add_argument("--from", dest="original", default=None, metavar="ORIGINAL_ROOT",
                   help="the original's folder whose data to adopt")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything and report what would be adopted; write nothing")
    p.add_argument("--quick", action="store_true",
                   help="with --dry-run: do not hash every vector and tar member (structure, "
                        "counts and indexes only)")
    p.add_argument("--fingerprint", default=None,
                   help="model fingerprint for the adopted shards (default: adopt.fingerprint, "
                        "else the root's models)")
    p.add_argument("--json", action="store_true", help="the report as JSON")
    p.set_defaults(func=_dispatch)
    what = p.add_subparsers(dest="adopt_what", metavar="settings")
    sp = what.add_parser(
        "settings", help="adopt the original's settings: Etsy key, rates, workers, alerts, "
                         "schedule, mirrors",
        description="Read ORIGINAL_DIR's .env, data/db/qps_config.json, worker definitions "
                    "and crontab (docs/OPERATIONS.md lists what is read) and write this root's "
                    "Etsy key file (mode 600), qps_config.json, hosts.toml and imageselector.toml "
                    "([alerts], [schedule.jobs.*], [backup.mirrors.*], [backup.targets.*]). "
                    "The original is only read; values the root already sets are kept. "
                    "Exit 0: everything adopted; 1: adopted, but lines say what is missing.")
    add_root_argument(sp)
    sp.add_argument("original_dir", metavar="ORIGINAL_DIR")
    sp.add_argument("--crontab", default=None, metavar="FILE",
                    help="the original's crontab (default: the output of `crontab -l`)")
    sp.add_argument("--dry-run", action="store_true", help="report what would be written; write nothing")
    sp.add_argument("--json", action="store_true", help="the report as JSON")
    sp.set_defaults(func=_dispatch)
