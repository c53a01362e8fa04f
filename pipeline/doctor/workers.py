"""Each worker host (hosts.toml, or this machine alone): reachable over SSH with a known host
key, the project checkout there at this checkout's commit, Python and its venv, the device
the models will use, every model's weights in its local cache, the background model file
with the checksum rembg expects, free disk against the floor, and the clock offset. All but
the connection and the clock come from one probe command run there (probe.py)."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from pipeline.doctor.check import WARNING, Check, passed, problem
from pipeline.doctor.context import DoctorContext
from pipeline.doctor.registry import doctor_check

AREA = "workers"
MIN_PYTHON = (3, 11)
GB = 1e9


def this_checkout() -> Path:
    import pipeline

    return Path(pipeline.__file__).resolve().parent.parent


def this_commit() -> str | None:
    """`git rev-parse HEAD` of the checkout this doctor runs from (what workers must run)."""
    try:
        r = subprocess.run(["git", "-C", str(this_checkout()), "rev-parse", "HEAD"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


@doctor_check(AREA, order=20)
def worker_checks(ctx: DoctorContext) -> list[Check]:
    from pipeline.core.errors import UserError
    from pipeline.core.hosts import worker_hosts

    hosts, workers = worker_hosts(ctx.root)
    if ctx.host is not None:
        workers = [w for w in workers if w.name == ctx.host]
        if not workers:
            names = ", ".join(w.name for w in worker_hosts(ctx.root)[1])
            raise UserError(f"--host {ctx.host}: no such worker (workers: {names})")
    expected = this_commit()
    out = []
    for host in workers:
        out += check_host(ctx, hosts, host, expected)
    return out


def check_host(ctx: DoctorContext, hosts, host, expected_commit: str | None) -> list[Check]:
    from pipeline.core.hosts import connected, ssh_settings
    from remote.errors import (AuthFailed, ChangedHostKey, HostKeyError, RemoteError,
                               UnknownHostKey)

    name = host.name
    trust = ctx.command("hosts", "trust", name)
    out: list[Check] = []
    try:
        with connected(ctx.root, hosts, host, ssh_settings(ctx.root)) as (transport, facts):
            if not host.local:
                out.append(passed(AREA, f"{name} ssh", f"{host.user}@{host.address}:{host.port} "
                                  f"answers, host key {facts['fingerprint']} known, heartbeat "
                                  f"{facts['heartbeat_s'] * 1000:.0f} ms"))
            probe = run_probe(ctx, transport, host)
            offset = None if host.local else transport.measure_clock()
    except UnknownHostKey as exc:
        return [problem(AREA, f"{name} ssh", f"host key not known: {exc}",
                        f"check the fingerprint on the host, then {trust}")]
    except ChangedHostKey as exc:
        return [problem(AREA, f"{name} ssh", str(exc),
                        f"if {name} was reinstalled: remove its line from {hosts.known_hosts}, "
                        f"then {trust}; otherwise do not connect")]
    except HostKeyError as exc:
        return [problem(AREA, f"{name} ssh", str(exc), f"repair {hosts.known_hosts}, then {trust}")]
    except AuthFailed as exc:
        return [problem(AREA, f"{name} ssh", str(exc),
                        f"add the public key of {host.key_file} to ~/.ssh/authorized_keys of "
                        f"{host.user} on {name} (or correct workers.{name}.key_file in "
                        f"{hosts.path})")]
    except RemoteError as exc:
        return out + [problem(AREA, f"{name} ssh", str(exc),
                              f"check {name} is on and workers.{name}.address/port in "
                              f"{hosts.path}")]
    out += probe_checks(ctx, host, hosts, probe, expected_commit)
    if offset is not None:
        out.append(clock_check(ctx, name, *offset))
    return out


def checkout_for(host) -> str:
    from remote.deploy import checkout_of

    if host.local and not host.checkout:
        return str(this_checkout())
    return checkout_of(host)


def run_probe(ctx: DoctorContext, transport, host) -> dict:
    """Run probe.py there with its Python; its JSON answer (``{"error": ...}`` if none)."""
    from remote.commands import python_c_loader
    from remote.errors import HostsConfigError, RemoteError

    from pipeline.doctor import probe as probe_module

    try:
        checkout = checkout_for(host)
    except HostsConfigError as exc:
        return {"error": str(exc), "config": True}
    params = {"checkout": checkout, "root": transport.root}
    arg = base64.b64encode(json.dumps(params).encode()).decode("ascii")
    source = Path(probe_module.__file__).read_text(encoding="utf-8")
    python = (getattr(transport, "python", None) if host.local else host.python) or sys.executable
    try:
        result = transport.run([python, "-c", python_c_loader(source), arg],
                               timeout=float(ctx.cfg("doctor.probe_timeout_s")))
    except RemoteError as exc:  # reachable, but the probe could not run or finish there
        return {"error": f"{python}: {exc}"}
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(probe_module.MARK):
            return json.loads(line[len(probe_module.MARK):])
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"{python} exited {result.exit_status}: {tail[0][:300]}", "python": None}


def probe_checks(ctx, host, hosts, p: dict, expected_commit: str | None) -> list[Check]:
    name = host.name
    deploy = ctx.command("hosts", "deploy", name)
    where = f"workers.{name} in {hosts.path}" if hosts.exists else f"the {name} worker"
    if "error" in p:
        fix = (f"set checkout in {where}" if p.get("config")
               else f"install Python {'.'.join(map(str, MIN_PYTHON))}+ on {name} and set "
                    f"python in {where}")
        return [problem(AREA, f"{name} python", p["error"], fix)]
    out = []
    version = tuple(int(x) for x in p["python"].split(".")[:2])
    if version < MIN_PYTHON:
        out.append(problem(AREA, f"{name} python", f"{p['executable']} is Python {p['python']}",
                           f"install Python {'.'.join(map(str, MIN_PYTHON))}+ on {name}, make "
                           f"the venv with it and set python in {where}"))
    elif not p["venv"]:
        out.append(problem(AREA, f"{name} python", f"{p['executable']} (Python {p['python']}) "
                                                    f"is not in a virtual environment",
                           f"on {name}: python3 -m venv {p['checkout']}/.venv, then set python "
                           f"in {where} to its python and run {deploy}", WARNING))
    else:
        out.append(passed(AREA, f"{name} python", f"Python {p['python']} in the venv "
                                                   f"{p['executable']}"))
    out.append(_checkout_check(ctx, host, p, expected_commit, deploy))
    if not p["root_exists"]:
        out.append(problem(AREA, f"{name} root", f"root {p['root']} does not exist there",
                           f"create it on {name} (mkdir {p['root']}) or correct root in {where}"))
    else:
        out.append(_disk_check(ctx, name, p))
    if not p["checkout_exists"]:
        return out
    if "project_error" in p:
        out.append(problem(AREA, f"{name} project", f"the project does not load there: "
                                                    f"{p['project_error']}", deploy))
        return out
    out += _model_checks(name, p.get("models") or {}, deploy)
    out.append(_background_check(name, p.get("background") or {}, deploy))
    out.append(_device_check(name, p.get("device") or {}, deploy))
    return out


def _checkout_check(ctx, host, p, expected, deploy) -> Check:
    name = host.name
    if not p["checkout_exists"]:
        return problem(AREA, f"{name} checkout", f"no project checkout at {p['checkout']}",
                       f"on {name}: git clone the project into {p['checkout']}, then {deploy}")
    commit = p.get("commit")
    if commit is None:
        return problem(AREA, f"{name} checkout", f"{p['checkout']} is not a git checkout "
                                                  f"({p.get('commit_error')})",
                       f"on {name}: git clone the project into {p['checkout']}")
    if expected is None:
        return passed(AREA, f"{name} checkout", f"{p['checkout']} at {commit[:12]} (this "
                                                 f"machine's code is not a git checkout: not compared)")
    if commit != expected:
        return problem(AREA, f"{name} checkout", f"{p['checkout']} is at {commit[:12]}, this "
                                                  f"checkout at {expected[:12]}",
                       deploy if not host.local else f"git -C {p['checkout']} pull --ff-only")
    return passed(AREA, f"{name} checkout", f"{p['checkout']} at {commit[:12]} (same as here)")


def _floor(ctx: DoctorContext, p: dict) -> tuple[int, str]:
    """The floor of the worker's root, as its own config sets it (pipeline/core/diskfloor.py,
    run there by the probe); else this root's disk.min_free_gb."""
    f = p.get("floor") or {}
    if "bytes" in f:
        return int(f["bytes"]), f"{f['key']} in that root's imageselector.toml"
    return int(float(ctx.cfg("disk.min_free_gb")) * GB), "disk.min_free_gb"


def _disk_check(ctx, name, p) -> Check:
    from pipeline.core.fmt import size

    free = p.get("disk_free")
    floor, key = _floor(ctx, p)
    if free is None:
        return passed(AREA, f"{name} disk", "free space not measured")
    text = f"{size(free)} free at {p['root']} (floor {size(floor)})"
    if free < floor:
        return problem(AREA, f"{name} disk", text, f"free space on {name}'s volume of "
                                                   f"{p['root']}, or lower {key}")
    return passed(AREA, f"{name} disk", text)


def _model_checks(name, listing, deploy) -> list[Check]:
    if "error" in listing:
        return [problem(AREA, f"{name} models", listing["error"], deploy)]
    if listing.get("profile") != "production":
        return [passed(AREA, f"{name} models", f"profile {listing.get('profile')}: test models "
                                                f"built there, nothing to fetch")]
    out = []
    for m in listing["models"]:
        if m["weights_present"]:
            out.append(passed(AREA, f"{name} model {m['name']}",
                              f"weights in {listing['cache_dir']}"))
        else:
            fetch = m["fetch"] or ""
            line = fetch.split(": ", 2)[-1] if "hf download" in fetch else fetch
            out.append(problem(AREA, f"{name} model {m['name']}",
                               f"weights missing in {listing['cache_dir']}", f"on {name}: {line}"))
    return out


def _background_check(name, bg, deploy) -> Check:
    label = f"{name} background model"
    if "error" in bg:
        return problem(AREA, label, bg["error"], deploy)
    if not bg.get("present"):
        return problem(AREA, label, f"{bg.get('model')} is not there (rembg would download it "
                                    f"at the first batch)", f"on {name}: {bg.get('fetch')}")
    if not bg.get("stock"):
        return passed(AREA, label, f"{bg.get('model')}" + (f" at {bg['path']}" if bg.get("path")
                                                            else ""))
    expected, got = bg.get("expected_md5"), bg.get("md5")
    if expected is None:
        return problem(AREA, label, f"{bg['path']} present; rembg's expected MD5 was not found "
                                    f"in its source (not compared)",
                       "check the rembg version on that host", WARNING)
    if got != expected:
        return problem(AREA, label, f"{bg['path']} has MD5 {got}, rembg expects {expected} "
                                    f"(it would download the model again)",
                       f"on {name}: delete {bg['path']} and fetch the stock "
                       f"{bg['model']}.onnx again into {bg.get('model_dir')}")
    return passed(AREA, label, f"{bg['path']} (MD5 {got} as rembg expects)")


def _device_check(name, d, deploy) -> Check:
    label = f"{name} device"
    if "error" in d:
        fix = ("set models.device = \"auto\" in that root's imageselector.toml"
               if "models.device" in d["error"] else deploy)
        return problem(AREA, label, d["error"], fix)
    dev = d["device"]
    what = {"cuda": f"CUDA ({d.get('gpu')})", "mps": "Apple MPS", "cpu": "CPU"}.get(dev, dev)
    providers = [p.replace("ExecutionProvider", "") for p in d.get("providers") or []]
    bg = "DirectML" if "Dml" in providers else providers[0] if providers else "?"
    return passed(AREA, label, f"models on {what}, background removal on {bg}")


def clock_check(ctx, name, offset: float, rtt: float) -> Check:
    limit = float(ctx.cfg("doctor.clock_max_offset_s"))
    text = (f"clock {abs(offset):.2f} s {'ahead of' if offset >= 0 else 'behind'} this "
            f"machine's (+/- {rtt / 2:.2f} s)")
    if abs(offset) > limit:
        return problem(AREA, f"{name} clock", text, f"set up time sync (NTP) on {name}", WARNING)
    return passed(AREA, f"{name} clock", text)
