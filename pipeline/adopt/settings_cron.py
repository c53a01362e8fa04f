"""The original's crontab -> the root's [schedule.jobs.*], its rsync lines -> exact mirrors
([backup.mirrors.*] with `source`, `dest`, `excludes`), and its backups folder -> a backup
target. Lines are recognised by the script they run (SCRIPT_JOBS) or by `rsync`; anything else
is listed as not adopted. This project's own block (`# BEGIN imageselector`) is skipped.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from pipeline.adopt.original import EMBEDDED_DIRS, TARS_DIRS
from pipeline.adopt.settings_read import Found

# (a word in the script's file name, the project's job); first match wins
SCRIPT_JOBS = (("tar_images", "archive"), ("update_primary", "archive"),
               ("backup_db", "backup"), ("weekly", "pipeline-weekly"),
               ("run_pipeline", "pipeline-weekly"), ("run_all", "pipeline-weekly"),
               ("sync_data", "sync-daily"), ("watchdog", "watch"))
# rsync options that take the next word as their value
_RSYNC_ARG_OPTS = {"-e", "--rsh", "--exclude", "--exclude-from", "--include", "--include-from",
                   "--filter", "-f", "--files-from", "--log-file", "--backup-dir", "--partial-dir",
                   "-T", "--temp-dir", "--password-file", "--chmod", "--timeout", "--bwlimit",
                   "--compare-dest", "--copy-dest", "--link-dest", "--suffix"}
_VOLUME_RES = (re.compile(r"^(/Volumes/[^/]+)"), re.compile(r"^(/run/media/[^/]+/[^/]+)"),
               re.compile(r"^(/media/[^/]+/[^/]+)"), re.compile(r"^(/mnt/[^/]+)"))
_REDIRECTS = {">", ">>", "<", ">&", "&>", ">|", "&>>"}
_SEPARATORS = {"&&", "||", ";", "|", "&"}
# the original's folder names -> this project's (ORIGINAL_SYSTEM.md)
_RENAMES = {TARS_DIRS[0]: TARS_DIRS[1], EMBEDDED_DIRS[0]: EMBEDDED_DIRS[1]}


def volume_of(path: str) -> str | None:
    for rx in _VOLUME_RES:
        m = rx.match(path)
        if m:
            return m.group(1)
    return None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-_") or "x"


def cron_lines(text: str) -> list[tuple[str, str]]:
    """(cron, command) per schedule line, outside this project's own block."""
    out, ours = [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("# BEGIN imageselector"):
            ours = True
        elif s.startswith("# END imageselector"):
            ours = False
        if ours or not s or s.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*\s*=", s):
            continue
        if s.startswith("@"):
            cron, _, cmd = s.partition(" ")
        else:
            parts = s.split(None, 5)
            if len(parts) < 6:
                continue
            cron, cmd = " ".join(parts[:5]), parts[5]
        out.append((cron, cmd.replace("\\%", "%")))
    return out


def _segments(cmd: str) -> list[list[str]]:
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    segs, cur, skip = [], [], False
    for tok in lex:
        if skip:
            skip = False
            continue
        if tok in _SEPARATORS:
            segs.append(cur)
            cur = []
        elif tok in _REDIRECTS:
            if cur and cur[-1].isdigit():
                cur.pop()
            skip = True
        else:
            cur.append(tok)
    segs.append(cur)
    return [s for s in segs if s]


def _job_of(seg: list[str]) -> str | None:
    for tok in seg:
        base = os.path.basename(tok).lower()
        if base.endswith((".py", ".sh")):
            for word, job in SCRIPT_JOBS:
                if word in base:
                    return job
    return None


def _rsync_paths(seg: list[str], cwd: Path, notes: list[str]) -> tuple[list[str], str, list[str]] | None:
    excludes, paths, i = [], [], 1
    while i < len(seg):
        tok = seg[i]
        name, eq, val = tok.partition("=")
        if tok.startswith("-") and name in _RSYNC_ARG_OPTS:
            if not eq:
                i += 1
                val = seg[i] if i < len(seg) else ""
            if name == "--exclude":
                excludes.append(val)
            elif name == "--exclude-from":
                p = Path(val) if os.path.isabs(val) else cwd / val
                try:
                    excludes += [ln.strip() for ln in p.read_text().splitlines()
                                 if ln.strip() and not ln.startswith(("#", ";"))]
                except OSError:
                    notes.append(f"mirrors: cannot read --exclude-from {p}; add its patterns to excludes")
        elif not tok.startswith("-"):
            paths.append(tok)
        i += 1
    if len(paths) < 2:
        return None
    return paths[:-1], paths[-1], excludes


def _mirror_table(src: str, dest: str, cwd: Path, original: Path, excludes: list[str],
                  delete: bool) -> tuple[dict, list[str]]:
    notes = []
    trailing = src.endswith("/")
    p = Path(os.path.normpath(src if os.path.isabs(src) else cwd / src))
    d = Path(os.path.normpath(dest))
    if not trailing:                    # rsync puts SRC itself inside DEST
        d = d / p.name
    try:
        rel = p.relative_to(original)
        rel_s = str(rel)
        for old, new in _RENAMES.items():
            if rel_s == old or rel_s.startswith(old + "/"):
                rel_s = new + rel_s[len(old):]
        source = "." if rel_s == "." else rel_s
    except ValueError:
        source = str(p)
    t: dict = {"source": source, "dest": str(d)}
    vol = volume_of(str(d))
    if vol:
        t.update(kind="volume", mount=vol)
    else:
        t["kind"] = "folder"
    src_vol = volume_of(str(p)) if os.path.isabs(source) else None
    if src_vol:
        t["source_mount"] = src_vol
    if excludes:
        t["excludes"] = list(excludes)
    if not os.path.isabs(source):
        notes.append(f"mirror {source} -> {d}: now mirrors this root's {source} (the adopted "
                     f"data), which replaces the original's copy there")
    if not delete:
        notes.append(f"mirror {source} -> {d}: the original's rsync had no --delete; this "
                     f"project's mirrors delete what the source no longer has (backup.rsync_args)")
    return t, notes


def read_schedule(text: str, original: Path, default_jobs: dict) -> Found:
    """{"jobs": {job: {"cron", ...}}, "mirrors": {name: table}} from crontab text."""
    f = Found()
    jobs: dict[str, dict] = {}
    mirrors: dict[str, dict] = {}
    mirror_jobs = {n: j.get("cron") for n, j in default_jobs.items() if n.startswith("mirror")}
    taken: set[str] = set()
    for cron, cmd in cron_lines(text):
        cwd = original
        found_job, rsyncs = None, []
        for seg in _segments(cmd):
            if seg[0] == "cd" and len(seg) > 1:
                cwd = Path(os.path.expanduser(seg[1]))
            elif os.path.basename(seg[0]) == "rsync":
                rsyncs.append(seg)
            else:
                found_job = found_job or _job_of(seg)
        if not found_job and not rsyncs:
            f.notes.append(f"schedule: not adopted (not one of the original's jobs): {cron} {cmd}")
            continue
        if rsyncs and not found_job:
            found_job = next((n for n, c in mirror_jobs.items() if c == cron and n not in taken), None)
        for seg in rsyncs:
            parsed = _rsync_paths(seg, cwd, f.notes)
            if parsed is None or any(re.match(r"^[^/]*:", x) for x in parsed[0] + [parsed[1]]):
                f.notes.append(f"mirrors: not adopted (not a local rsync of folders): {' '.join(seg)}")
                continue
            sources, dest, excludes = parsed
            delete = any(t.startswith("--delete") for t in seg)
            for src in sources:
                table, notes = _mirror_table(src, dest, cwd, original, excludes, delete)
                f.notes += notes
                src_label = (Path(table.get("source_mount") or table["source"]).name
                             if os.path.isabs(table["source"]) else table["source"])
                dest_vol = volume_of(os.path.normpath(dest))
                dest_label = Path(dest_vol or os.path.normpath(dest)).name
                name = base = _slug(f"{src_label}-to-{dest_label}")
                n = 2
                while name in mirrors:
                    name, n = f"{base}-{n}", n + 1
                mirrors[name] = table
                found_job = found_job or f"mirror-{name}"
                table["job"] = found_job
        if found_job is None:
            continue
        if found_job in jobs:
            if jobs[found_job]["cron"] != cron:
                f.notes.append(f"schedule: {found_job} appears twice ({jobs[found_job]['cron']} "
                               f"and {cron}); the first is kept")
            continue
        taken.add(found_job)
        job = {"cron": cron}
        if found_job not in default_jobs:
            job.update(steps=[["run", "backup", "--once", "--job", found_job]],
                       description="a mirror of the original's crontab")
        jobs[found_job] = job
    if not jobs:
        f.missing.append("schedule: the crontab has none of the original's jobs")
    f.values = {"jobs": jobs, "mirrors": mirrors}
    return f


def read_backup_target(original: Path) -> Found:
    """The original's backups/ is a link to the backup disk (ORIGINAL_SYSTEM.md): snapshots go
    beside it on that disk, in a folder of their own (this project rotates its generations,
    and the original's snapshots have the same names)."""
    f = Found()
    link = original / "backups"
    if not link.is_symlink():
        f.missing.append(f"backup target: {link} is not a link to a backup disk; add "
                         f"[backup.targets.NAME] (kind = \"volume\", path, mount) to imageselector.toml")
        return f
    real = Path(os.path.realpath(link))
    path = real.parent / "imageselector_backups"
    vol = volume_of(str(real))
    t: dict = {"path": str(path), "job": "backup"}
    t.update({"kind": "volume", "mount": vol} if vol else {"kind": "folder", "create": True})
    name = _slug(Path(vol).name if vol else real.parent.name)
    f.values = {"targets": {name: t}}
    f.notes.append(f"backup target {name}: {path} (beside the original's {real}, never inside it)")
    return f
