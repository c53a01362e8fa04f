"""hosts list | trust NAME | check NAME: the worker hosts of hosts.toml."""
from __future__ import annotations

import functools
import json
import sys

from imageselector.cli import add_root_argument


def register(sub) -> None:
    p = sub.add_parser("hosts", help="worker hosts: list them, trust a host key, check a host")
    add_root_argument(p)
    hs = p.add_subparsers(dest="hosts_command", metavar="ACTION")

    lp = hs.add_parser("list", help="the workers in hosts.toml and whether their key is known")
    add_root_argument(lp)
    lp.add_argument("--json", action="store_true", help="print JSON")
    lp.set_defaults(func=cmd_list)

    tp = hs.add_parser("trust", help="show a host's key fingerprint and record it in "
                                     "known_hosts after you confirm it")
    add_root_argument(tp)
    tp.add_argument("name", help="worker name in hosts.toml")
    tp.add_argument("--yes", action="store_true",
                    help="record without asking (only after checking the fingerprint)")
    tp.set_defaults(func=cmd_trust)

    cp = hs.add_parser("check", help="connect to a host and show its health")
    add_root_argument(cp)
    cp.add_argument("name", help="worker name in hosts.toml")
    cp.add_argument("--json", action="store_true", help="print JSON")
    cp.set_defaults(func=cmd_check)

    dp = hs.add_parser("deploy", help="git pull the code on a worker, then install its "
                                      "platform's dependencies (asks for YES:GIT)")
    add_root_argument(dp)
    dp.add_argument("name", help="worker name in hosts.toml")
    dp.add_argument("--confirm", default=None, metavar="YES:GIT",
                    help="the confirmation, for use without a terminal")
    dp.add_argument("--no-install", action="store_true", help="only git pull")
    dp.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    dp.set_defaults(func=cmd_deploy)

    def no_action(args) -> int:
        p.print_help()
        return 2
    p.set_defaults(func=no_action)


def _remote_errors_are_user_errors(fn):
    """A RemoteError is shown like any bad input: one line, exit 2."""
    @functools.wraps(fn)
    def wrapper(args):
        from pipeline.core.errors import UserError
        from remote.errors import RemoteError
        try:
            return fn(args)
        except RemoteError as exc:
            raise UserError(str(exc)) from None
    return wrapper


def _load(args):
    from pipeline.core.root import Root
    from remote.hosts import load_hosts
    from remote.ssh import SSHSettings

    root = Root.open(args.root)
    hosts = load_hosts(root.hosts_path)
    settings = SSHSettings.from_mapping(root.config.section("remote"))
    return root, hosts, settings


@_remote_errors_are_user_errors
def cmd_list(args) -> int:
    from remote.hostkeys import load_known_hosts

    _, hosts, _ = _load(args)
    known = load_known_hosts(hosts.known_hosts)
    rows = []
    for h in hosts:
        d = h.as_dict()
        d["host_key_known"] = None if h.local else bool(known.lookup(h.known_hosts_name))
        rows.append(d)
    if args.json:
        print(json.dumps({"hosts_file": str(hosts.path), "exists": hosts.exists,
                          "known_hosts": str(hosts.known_hosts), "workers": rows}, indent=1))
        return 0
    if not hosts.exists:
        print(f"no hosts file at {hosts.path}: only the local worker")
        return 0
    print(f"{hosts.path} (host keys: {hosts.known_hosts})")
    if not rows:
        print("  no workers")
    for d in rows:
        if d["local"]:
            print(f"  {d['name']:<12} local    root {d['root'] or '(this root)'}")
            continue
        key = "key known" if d["host_key_known"] else "KEY NOT TRUSTED (hosts trust)"
        print(f"  {d['name']:<12} {d['os']:<8} {d['user']}@{d['address']}:{d['port']:<6} "
              f"root {d['root']}  {key}")
    return 0


@_remote_errors_are_user_errors
def cmd_trust(args) -> int:
    from pipeline.core.errors import UserError
    from remote.hostkeys import trust

    _, hosts, settings = _load(args)
    host = hosts.get(args.name)
    if host.local:
        raise UserError(f"{host.name} is the local worker: it has no host key")

    def confirm(h, key_type: str, fingerprint: str) -> bool:
        print(f"{h.name} at {h.known_hosts_name} offers {key_type} key {fingerprint}")
        if args.yes:
            return True
        print("Compare it with the host's own key (on the host: ssh-keygen -lf on its "
              "host key .pub file).")
        try:
            answer = input(f"Type yes to record it in {hosts.known_hosts}: ")
        except EOFError:
            answer = ""
        return answer.strip() == "yes"

    result = trust(host, hosts.known_hosts, confirm, settings)
    if result.already_known:
        print(f"{host.name}: {result.key_type} {result.fingerprint} is already in "
              f"{hosts.known_hosts}")
        return 0
    if result.recorded:
        print(f"{host.name}: recorded in {hosts.known_hosts}")
        return 0
    print(f"{host.name}: not recorded", file=sys.stderr)
    return 1


@_remote_errors_are_user_errors
def cmd_check(args) -> int:
    from pipeline.core.hosts import host_report

    root, hosts, settings = _load(args)
    host = hosts.get(args.name)
    report = host_report(root, hosts, host, settings)
    health = report["health"]
    ok = report["ok"]
    if args.json:
        print(json.dumps(report, indent=1))
        return 0 if ok else 1
    print(f"{host.describe()}: reachable" + (f", key {report['fingerprint']}, heartbeat "
                                             f"{report['heartbeat_s'] * 1000:.0f} ms"
                                             if not host.local else ""))
    print(f"  {health.get('os')} {health.get('release')} {health.get('machine')}, "
          f"Python {health.get('python')}, {health.get('cpu_count')} CPUs, "
          f"load {health.get('load')}")
    if health.get("mem_total"):
        print(f"  memory {_gib(health.get('mem_available'))} free of "
              f"{_gib(health['mem_total'])}")
    if health.get("root_exists"):
        print(f"  root {health.get('root')}: {_gib(health.get('disk_free'))} free of "
              f"{_gib(health.get('disk_total'))}")
    else:
        print(f"  root {health.get('root')} DOES NOT EXIST on that host")
    for gpu in health.get("gpus") or []:
        extra = ""
        if gpu.get("mem_total_mib"):
            extra = (f", {gpu.get('mem_used_mib')} of {gpu['mem_total_mib']} MiB used, "
                     f"{gpu.get('util_percent')}% busy")
        print(f"  GPU {gpu.get('name')} ({gpu.get('kind')}){extra}")
    if not health.get("psutil"):
        print("  (psutil is not installed in that Python: figures are partial)")
    if "clock_offset_s" in report:
        offset = report["clock_offset_s"]
        late = "ahead of" if offset >= 0 else "behind"
        print(f"  clock {abs(offset):.2f} s {late} this machine's (+/- {report['clock_rtt_s'] / 2:.2f} s)"
              + ("; heartbeats are aged by the host's clock, but set up time sync there"
                 if abs(offset) > 5 else ""))
    return 0 if ok else 1


def _gib(n) -> str:
    return "?" if n is None else f"{n / (1 << 30):.1f} GiB"


@_remote_errors_are_user_errors
def cmd_deploy(args) -> int:
    from remote.deploy import CONFIRMATION, deploy, deploy_steps
    from remote.transport import transport_for

    root, hosts, settings = _load(args)
    host = hosts.get(args.name)
    steps = deploy_steps(host, install=not args.no_install)
    print(f"deploy to {host.describe()}:")
    for argv in steps:
        print("  " + " ".join(argv))
    if args.dry_run:
        return 0
    confirmation = args.confirm
    if confirmation is None:
        if not sys.stdin.isatty():
            print(f"imageselector: type {CONFIRMATION} to deploy (or pass --confirm {CONFIRMATION})",
                  file=sys.stderr)
            return 2
        confirmation = input(f"type {CONFIRMATION} to run these on {host.name}: ").strip()
    with transport_for(host, hosts.known_hosts, settings, local_root=root.path) as transport:
        result = deploy(host, confirmation, transport, install=not args.no_install)
    print(result)
    return 0 if result.ok else 1
