"""Where every panel gets its data: small functions over pipeline/ and remote/.

Each function either returns plain data or raises. ``NotAvailable`` means that part of
the pipeline has not landed yet; the panel shows the message in place, and connecting the
part later is a change to the one function here. ``SourceMessage`` is a clear, expected
condition (no DB yet, hosts.toml malformed) shown in place. Anything else is shown as an
error in place. All of these run in poll threads, never on the UI thread.

The console only reads the DB, through read-only connections that are closed after each
poll, so it never holds a write lock (and holds no lock at all between polls).
"""
from __future__ import annotations

import importlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


class NotAvailable(Exception):
    """The pipeline side of this panel does not exist yet."""


class SourceMessage(Exception):
    """An expected condition to show in place of the data (not a failure of the console)."""


def optional_function(module: str, name: str) -> Callable | None:
    """module.name if that module exists and has it; None when the part has not landed."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
            return None
        raise
    return getattr(mod, name, None)


# ---------------------------------------------------------------------------
# Local stages, DB, lock holders (the data of pipeline/status/snapshot.py)
# ---------------------------------------------------------------------------
_usage = None   # pipeline.status.proc_usage.ProcessUsage, made on first use


def local_stages(root, now: float) -> list[dict]:
    """This host's stage rows, each running one with its CPU % since the previous poll and
    its resident memory (psutil; fresher than the heartbeat's)."""
    global _usage
    from pipeline.core.stage_observe import stage_status
    from pipeline.status.proc_usage import ProcessUsage
    from pipeline.status.snapshot import local_stage_names

    if _usage is None:
        _usage = ProcessUsage()
    rows = [stage_status(root, name, now) for name in local_stage_names(root)]
    for row in rows:
        if row.get("pid"):
            row.update({k: v for k, v in _usage.sample(row["pid"]).items() if v is not None})
    _usage.forget_others({int(r["pid"]) for r in rows if r.get("pid")})
    return rows


def queue_reasons(root, depths: dict, rows: list[dict], now: float) -> dict[str, dict]:
    """Why each held-back queue waits, and when it moves next (pipeline/status/queue_reasons.py,
    the same words as `status`), from the stage rows of every host."""
    from pipeline.status.queue_reasons import reasons_for_root

    return reasons_for_root(root, depths, rows, now)


def name_lock_holders(holders: list[dict], rows: list[dict]) -> list[dict]:
    """Each lock holder with its stage and host (the heartbeats' pids; this process is
    "console") and its command without the interpreter's path."""
    import os

    from pipeline.status.lock_owners import name_holders

    return name_holders(holders, [r for r in rows if r.get("host", "local") == "local"],
                        own_pid=os.getpid())


def connect_read_only(db_path: Path, timeout_s: float) -> sqlite3.Connection:
    if not Path(db_path).exists():
        raise SourceMessage(f"no DB yet at {db_path}")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=timeout_s,
                           isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    return conn


def _db_failure(db_path: Path, exc: sqlite3.Error) -> SourceMessage:
    text = str(exc)
    if "no such table" in text:
        return SourceMessage(f"DB {db_path} has no pipeline tables yet ({text})")
    if "locked" in text or "busy" in text:
        return SourceMessage(f"DB {db_path} is locked: {text} (retrying)")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return SourceMessage(f"DB {db_path}: corrupt or not an SQLite database ({text})")
    return SourceMessage(f"DB {db_path}: {text}")


def read_db(root, now: float, timeout_s: float = 2.0) -> dict:
    """Queue depths: the trigger-kept counters, O(1) at any size (polled every refresh)."""
    from pipeline.core.db import queue_depths

    conn = connect_read_only(root.db_path, timeout_s)
    try:
        return {"queues": queue_depths(conn)}
    except sqlite3.Error as exc:
        raise _db_failure(root.db_path, exc) from None
    finally:
        conn.close()


def read_backups(root, now: float, timeout_s: float = 2.0) -> dict:
    """Each backup target's state, and the scheduled jobs with their last results (or, before
    the scheduler exists, the last backup rows). These change slowly: polled less often."""
    from pipeline.stages.backup.status import status_view

    conn = connect_read_only(root.db_path, timeout_s)
    out: dict[str, Any] = {"backups": [], "schedule": None, "backup_jobs": [], "notes": []}
    try:
        out["backups"] = status_view(root, conn, now, out["notes"])
        out["schedule"] = _optional_section(out, "schedule", "pipeline.core.schedule", "show",
                                            root, conn, now)
        out["backup_jobs"] = [dict(zip(("backup_id", "target", "kind", "started_at",
                                        "finished_at", "ok", "verified", "size_bytes", "error"), row))
                              for row in conn.execute(
                                  "SELECT backup_id, target, kind, started_at, finished_at, ok, "
                                  "verified, size_bytes, error FROM backups "
                                  "ORDER BY started_at DESC LIMIT 8")]
    except sqlite3.Error as exc:
        raise _db_failure(root.db_path, exc) from None
    finally:
        conn.close()
    return out


def _optional_section(out: dict, what: str, module: str, name: str, *args):
    """Another part's status function, if it has landed; its failure is a note, not a crash
    of the whole DB panel."""
    from pipeline.core.errors import UserError

    fn = optional_function(module, name)
    if fn is None:
        return None
    try:
        return fn(*args)
    except (UserError, OSError, ValueError) as exc:
        out["notes"].append(f"{what}: {exc}")
        return None


def lock_holders(root, view, now: float) -> list[dict]:
    """Every process holding the DB (writer first), with since when (view: LockView)."""
    return view.holders(root.db_path, now)


def lock_holders_now(root) -> list[dict]:
    """A fresh look for the escalation screen (not the panel's remembered view)."""
    from pipeline.core.locks import lock_holders as fresh

    return fresh(root.db_path)


def stage_heartbeat(root, name: str) -> dict:
    from pipeline.core.fsutil import read_json_or_none

    return read_json_or_none(root.heartbeat_path(name)) or {}


# ---------------------------------------------------------------------------
# The doctor (`imageselector doctor`): run one area at a time so the screen shows progress
# ---------------------------------------------------------------------------
def doctor_areas(root) -> list[str]:
    from pipeline.doctor.runner import area_names

    return area_names()


def doctor_checks(root, areas: list[str] | None = None) -> list:
    """pipeline.doctor.runner.run_checks, as the CLI runs it (no --host, no test alert):
    Check objects (each .line() is the CLI's line). Slow: SSH to workers, a live Etsy call."""
    from pipeline.doctor.runner import run_checks

    return run_checks(root, host=None, send_test_alert=False, areas=areas)


# ---------------------------------------------------------------------------
# The weekly run, the pause protocol, alerts
# ---------------------------------------------------------------------------
def runner_view(root, now: float, timeout_s: float = 2.0) -> dict:
    """The runner's last runs and the alerts (from the DB), and each pausable stage's pause
    request and acknowledgement (PAUSE_/PAUSED_ files). The live phase comes from the
    pipeline stage's heartbeat (info.phase, info.steps) in the stages source."""
    from pipeline.core.stage import PAUSABLE, STAGES

    pause = {}
    for name in PAUSABLE:
        spec = STAGES[name]
        pause[name] = {"requested": root.file(spec.pause_file).exists(),
                       "acknowledged": root.file(spec.paused_file).exists()}
    view: dict[str, Any] = {"pause": pause, "runs": [], "alerts": [], "summary": None,
                            "db_error": None}
    try:
        conn = connect_read_only(root.db_path, timeout_s)
    except SourceMessage as exc:
        view["db_error"] = str(exc)
        return view
    try:
        view["runs"] = [dict(zip(("started_at", "ended_at", "exit_code", "outcome", "reason",
                                  "counters"), row))
                        for row in conn.execute(
                            "SELECT started_at, ended_at, exit_code, outcome, reason, counters "
                            "FROM stage_runs WHERE stage = 'pipeline' "
                            "ORDER BY started_at DESC LIMIT 5")]
        recent_alerts = optional_function("pipeline.core.alerts", "recent_alerts")
        if recent_alerts is not None:
            view["alerts"] = recent_alerts(conn, 20)
        else:
            view["alerts"] = [dict(zip(("at", "kind", "text", "sent", "error"), row))
                              for row in conn.execute(
                                  "SELECT at, kind, text, sent, error FROM alerts "
                                  "ORDER BY at DESC LIMIT 20")]
        summary_json = optional_function("pipeline.stages.runner.runner", "summary_json")
        last = summary_json(conn) if summary_json is not None else None
        view["summary"] = last.get("summary") if isinstance(last, dict) else None
    except sqlite3.Error as exc:
        view["db_error"] = str(_db_failure(root.db_path, exc))
    finally:
        conn.close()
    return view


# ---------------------------------------------------------------------------
# Worker hosts: status, start, stop and logs over one cached SSH connection per host
# (pipeline/core/hoststages.py)
# ---------------------------------------------------------------------------
def worker_hosts(root) -> list[dict]:
    """The SSH workers of hosts.toml (a `local = true` worker is this machine: its stages
    are the local rows)."""
    from remote.errors import RemoteError
    from remote.hosts import load_hosts

    try:
        hosts = load_hosts(root.hosts_path)
    except RemoteError as exc:
        raise SourceMessage(str(exc)) from None
    return [{**h.as_dict(), "describe": h.describe()} for h in hosts if not h.local]


def ray_workers(root, now: float) -> list[dict]:
    """The Ray workers of hosts.toml as the running orchestrator last saw them (status's
    workers rows with their ``ray`` view; no connection to the cluster from here)."""
    from remote.errors import RemoteError
    from remote.hosts import load_hosts

    try:
        if not load_hosts(root.hosts_path).ray:
            return []
    except RemoteError:
        return []   # the hosts source shows a malformed hosts.toml
    from pipeline.stages.orchestrate.status import workers_status

    rows = workers_status(root, look=False, now=now)
    return [w for w in rows if w.get("kind") == "ray"]


def local_serving(root, now: float) -> list[dict]:
    """The re-embed servers of this machine's `local = true` workers (rows of host local);
    [] when hosts.toml is malformed (the hosts source says so)."""
    from pipeline.core.errors import UserError
    from pipeline.core.hoststages import local_serve_rows

    try:
        return local_serve_rows(root, now)
    except UserError:
        return []


def reembed_jobs(root, now: float) -> list[dict]:
    """Re-embeds started and not yet switched on (`status`'s reembed section)."""
    from pipeline.reembed.status import reembed_progress

    return reembed_progress(root.embeddings_dir)


def host_stages(root, host: dict, timeout_s: float) -> list[dict]:
    """The stages on a worker host, as rows shaped like pipeline.core.stage_observe.stage_status (with
    "host" set to the host's name). An unreachable host raises (the app shows its rows as
    unreachable with the text, and lists the host among the failing sources)."""
    from pipeline.core.hoststages import host_stage_rows

    rows = host_stage_rows(root, host["name"], timeout_s)
    gone = [r for r in rows if r["state"] == "unreachable"]
    if rows and len(gone) == len(rows):
        raise SourceMessage(gone[0].get("error") or f"{host['name']}: unreachable")
    return rows


def host_log_tail(root, host: dict, stage: str, lines: int,
                  timeout_s: float | None = None) -> list[str]:
    from pipeline.core.hoststages import host_log_tail as tail

    return tail(root, host["name"], stage, lines, _source_timeout(root, timeout_s))


def start_remote(root, host: dict, stage: str) -> str:
    """`imageselector start` there, on a connection of its own (remote.command_timeout)."""
    from pipeline.core.hoststages import start_remote as start

    return start(root, host["name"], stage)


def stop_remote(root, host: dict, stage: str, timeout_s: float | None = None) -> str:
    """The kill file there, over the host's cached connection."""
    from pipeline.core.hoststages import stop_remote as stop

    return stop(root, host["name"], stage, _source_timeout(root, timeout_s))


def _source_timeout(root, timeout_s: float | None) -> float:
    # the console's own limit, so these calls share the status poll's cached connection
    return float(root.config.get("console.source_timeout_s")) if timeout_s is None else timeout_s


def close_hosts() -> None:
    """Close the cached SSH connections (when the console exits)."""
    from pipeline.core.hoststages import close_all

    close_all()


def deploy(root, host: dict) -> str:
    """git pull on a worker (the caller has had YES:GIT typed). Uses remote.deploy.deploy
    when it exists."""
    fn = optional_function("remote.deploy", "deploy")
    if fn is None:
        raise NotAvailable("deploy: not available yet (remote/deploy.py)")
    from remote.hosts import load_hosts

    result = fn(load_hosts(root.hosts_path).get(host["name"]))
    return str(result) if result is not None else f"deployed to {host['name']}"


# ---------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------
def local_log_tail(path: Path, lines: int) -> tuple[list[str], tuple]:
    """The last lines of a log and a signature (size, mtime) to skip unchanged redraws."""
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        raise SourceMessage(f"no log yet at {path}") from None
    from pipeline.core.stage_control import tail_lines

    return tail_lines(path, lines, max_bytes=256 * 1024), (st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------------
# Search
# ---------------------------------------------------------------------------
# Searches run in the search helper process (pipeline/search/helper.py), which holds the
# engine and the models: this process never imports torch. The pane builds the request from
# its typed line (pipeline/search/helper_query.py) and has no search logic of its own.
SEARCH_LOCATOR = "pipeline.stages.archive.primary:primary_location"  # search imports no stage


def parse_search(line: str, k: int, shown: set[int] | None = None):
    """The pane's typed line as a SearchRequest; a one-line UserError when it cannot run."""
    from pipeline.search.helper_query import parse_query_text

    return parse_query_text(line, k, shown)


def search_kwargs(query: str) -> dict:
    """A typed line in issue 7's keyword form: {"text"}, {"listing"} or {"image"}."""
    from pipeline.core.errors import UserError

    try:
        req = parse_search(query, 1)
    except UserError as exc:
        raise SourceMessage(str(exc)) from None
    if req.listing is not None:
        return {"listing": req.listing}
    if req.images:
        return {"image": str(req.images[0])}
    return {"text": req.text}


def open_search_helper(root):
    """The client of this console's search helper (started on its first search)."""
    from pipeline.search.helper_client import SearchHelperClient

    return SearchHelperClient(root, locate=SEARCH_LOCATOR)


def search(helper, request, on_progress: Callable[[str], None] | None = None) -> dict:
    """One request through the helper: {"kind", "results" (best first), "groups" (same
    item: by shop), "warnings", "notes", "took_s", "text_cached"}. Each result: listing_id,
    url, image_id, title, price, currency, shop_id, shop, score, agree, models ({model: {rank,
    score}}), primary_image {"path", "offset", "size"} (DECISIONS.md)."""
    answer, notes = helper.search(request, on_progress)
    outcome = dict(answer["outcome"])
    outcome["notes"] = list(notes) + list(outcome.get("notes") or [])
    outcome["took_s"] = answer.get("took_s")
    outcome["text_cached"] = answer.get("text_cached", False)
    return outcome


def load_thumbnail(root, primary_image: dict | None, max_px: int = 256):
    """The primary image as a small PIL image, read from its tar by offset when it has one."""
    if not primary_image or not primary_image.get("path"):
        return None
    import io

    from PIL import Image

    path = Path(primary_image["path"])
    if not path.is_absolute():
        path = root.path / path
    with open(path, "rb") as fh:
        offset, size = primary_image.get("offset"), primary_image.get("size")
        if offset is not None:
            fh.seek(int(offset))
            data = fh.read(int(size)) if size else fh.read()
        else:
            data = fh.read()
    image = Image.open(io.BytesIO(data))
    image.thumbnail((max_px, max_px))
    return image.convert("RGB")


@dataclass
class Sources:
    """The functions the console polls and calls; tests replace some of them."""

    local_stages: Callable = local_stages
    queue_reasons: Callable = queue_reasons
    name_lock_holders: Callable = name_lock_holders
    doctor_areas: Callable = doctor_areas
    doctor_checks: Callable = doctor_checks
    read_db: Callable = read_db
    read_backups: Callable = read_backups
    lock_holders: Callable = lock_holders
    lock_holders_now: Callable = lock_holders_now
    stage_heartbeat: Callable = stage_heartbeat
    runner_view: Callable = runner_view
    worker_hosts: Callable = worker_hosts
    host_stages: Callable = host_stages
    ray_workers: Callable = ray_workers
    reembed_jobs: Callable = reembed_jobs
    local_serving: Callable = local_serving
    host_log_tail: Callable = host_log_tail
    start_remote: Callable = start_remote
    stop_remote: Callable = stop_remote
    close_hosts: Callable = close_hosts
    deploy: Callable = deploy
    local_log_tail: Callable = local_log_tail
    parse_search: Callable = parse_search
    open_search_helper: Callable = open_search_helper
    search: Callable = search
    load_thumbnail: Callable = load_thumbnail
