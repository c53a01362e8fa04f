"""doctor: everything a real weekly run needs, one line per check, the fix under each problem;
exit 1 when anything would stop or spoil the run."""
from __future__ import annotations

import json

from imageselector.cli import add_root_argument


def cmd_doctor(args) -> int:
    from pipeline.core.root import Root
    from pipeline.doctor.check import OK, exit_code, summary
    from pipeline.doctor.runner import run_checks

    root = Root.open(args.root, create=False)
    checks = run_checks(root, host=args.host, send_test_alert=args.send_test_alert)
    code = exit_code(checks)
    if args.json:
        print(json.dumps([c.as_json() for c in checks], indent=1))
        return code
    for c in checks:
        if c.severity != OK or args.verbose:
            print(c.line())
    print(summary(checks, args.verbose))
    return code


def register(sub) -> None:
    p = sub.add_parser("doctor", help="check everything the weekly run needs: Etsy key, workers, "
                                      "volumes, alerts, schedule; one line per problem with its fix")
    add_root_argument(p)
    p.add_argument("--json", action="store_true",
                   help="print every check as {area, name, ok, severity, text, fix}")
    p.add_argument("--host", default=None, metavar="NAME", help="check only this worker host")
    p.add_argument("--send-test-alert", action="store_true",
                   help="also send one test alert through the configured mail server")
    p.add_argument("--verbose", "-v", action="store_true", help="list the checks that passed too")
    p.set_defaults(func=cmd_doctor)
