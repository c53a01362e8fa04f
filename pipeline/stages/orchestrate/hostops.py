"""What the orchestrator does on a worker host's files, as one small stdlib-only program.

On an SSH worker it runs as ``PYTHON -c <this file> OP JSON`` (one remote command per
operation, whatever the number of images); for the local worker the same functions are
called in-process. It never touches a worker process: it only reads the worker's heartbeat
and moves folders in the worker's inbox and outbox, always by rename so the worker (which
ignores hidden and ``.partial`` names) never sees half a batch.

Operations (each prints one JSON object; exit 66 when the root does not exist):
  state    the worker's heartbeat, the host's clock, and the batch names in each folder
  unpack   incoming/<name>.tar -> inbox/<name> (checked member by member), tar removed
  pack     outbox/<name> -> results/<name>.tar (one file to download and verify)
  cleanup  forget a batch on the host: its result, tars and leftovers of cut transfers
  drop     take a batch out of the inbox unless the worker has it in hand
  clear_kill  remove a KILL_WORKER this orchestrator wrote, once the worker has stopped

Keep this file free of imports outside the standard library: it runs on hosts whose
Python may only have what the worker needs.
"""
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import time

ROOT_MISSING = 66
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
IMAGE_RE = re.compile(r"^[0-9]+_[0-9]+\.jpg$")
CHUNK = 1 << 20
# Folders under the worker's root; the orchestrator passes the worker's own names
# (pipeline.batches.batchfile) so they are spelled in one place.
DEFAULT_LAYOUT = {"inbox": "worker/inbox", "outbox": "worker/outbox",
                  "rejected": "worker/rejected", "incoming": "worker/incoming",
                  "results": "worker/results", "heartbeat": "run/worker.json",
                  "kill_file": "KILL_WORKER"}


class RootMissing(Exception):
    pass


class OpError(Exception):
    pass


def _path(root, rel):
    return os.path.join(root, *rel.split("/"))


def _dirs(spec):
    root = spec["root"]
    if not os.path.isdir(root):
        raise RootMissing("no such folder: %s" % root)
    layout = dict(DEFAULT_LAYOUT)
    layout.update(spec.get("layout") or {})
    return root, {k: _path(root, v) for k, v in layout.items()}


def _name(spec):
    name = spec.get("name", "")
    if not NAME_RE.match(name) or name.endswith(".partial"):
        raise OpError("bad batch name %r" % (name,))
    return name


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_tree(path):
    """Rename to a hidden name first, so a crash never leaves a valid-looking half."""
    if not os.path.exists(path):
        return False
    parent, base = os.path.split(path)
    trash = os.path.join(parent, ".%s.trash-%d-%d" % (base, os.getpid(), int(time.time() * 1e6)))
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _remove_file(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _sha256(path):
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _listdir(path):
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _read_json(path):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def _durable():
    """Flush what was written; one sync for a whole batch instead of one fsync per image."""
    if hasattr(os, "sync"):
        os.sync()


# ---- operations -------------------------------------------------------------------------

def state(spec):
    root, d = _dirs(spec)
    for key in ("inbox", "outbox", "incoming", "results"):
        os.makedirs(d[key], exist_ok=True)
    inbox, partial = [], []
    for name in _listdir(d["inbox"]):
        p = os.path.join(d["inbox"], name)
        if name.endswith(".partial"):
            partial.append(name[:-len(".partial")])
        elif NAME_RE.match(name) and os.path.isfile(os.path.join(p, "manifest.json")):
            inbox.append(name)
    # inbox first, then outbox: the worker commits a result before it removes the batch,
    # so a batch is always seen in at least one of the two listings.
    outbox = [n for n in _listdir(d["outbox"])
              if NAME_RE.match(n) and os.path.isfile(os.path.join(d["outbox"], n, "result.json"))]
    leftovers = [n for n in _listdir(d["incoming"]) + _listdir(d["results"])
                 if n.endswith(".part") or ".tmp-" in n]
    return {"root": root, "now": time.time(), "heartbeat": _read_json(d["heartbeat"]),
            "kill_file": os.path.exists(d["kill_file"]),
            "inbox": inbox, "partial": partial, "outbox": outbox,
            "incoming": [n[:-4] for n in _listdir(d["incoming"]) if n.endswith(".tar")],
            "results": [n[:-4] for n in _listdir(d["results"]) if n.endswith(".tar")],
            "leftovers": leftovers}


def _member_target(name, member):
    """The path inside a batch folder for a tar member, or an error for anything else."""
    prefix = name + "/"
    if not member.name.startswith(prefix) or not member.isfile():
        raise OpError("batch tar member %r is not a file under %s/" % (member.name, name))
    rel = member.name[len(prefix):]
    if rel == "manifest.json":
        return [rel]
    parts = rel.split("/")
    if len(parts) == 2 and parts[0] == "images" and IMAGE_RE.match(parts[1]):
        return parts
    raise OpError("batch tar member %r is not part of a batch" % (member.name,))


def unpack(spec):
    root, d = _dirs(spec)
    name = _name(spec)
    tar_path = os.path.join(d["incoming"], name + ".tar")
    final = os.path.join(d["inbox"], name)
    if os.path.isdir(final) or os.path.isdir(os.path.join(d["outbox"], name)):
        _remove_file(tar_path)  # shipped before (a retried ship): nothing to do
        return {"name": name, "unpacked": False, "present": True}
    if not os.path.isfile(tar_path):
        raise OpError("%s is missing" % tar_path)
    staging = final + ".partial"
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.makedirs(os.path.join(staging, "images"))
    count = 0
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            parts = _member_target(name, member)
            src = tar.extractfile(member)
            with open(os.path.join(staging, *parts), "wb") as out:
                shutil.copyfileobj(src, out, CHUNK)
            count += 1
    if not os.path.isfile(os.path.join(staging, "manifest.json")):
        raise OpError("batch tar %s has no manifest.json" % tar_path)
    _durable()
    os.replace(staging, final)
    _fsync_dir(d["inbox"])
    _remove_file(tar_path)
    return {"name": name, "unpacked": True, "files": count}


def pack(spec):
    root, d = _dirs(spec)
    name = _name(spec)
    folder = os.path.join(d["outbox"], name)
    if not os.path.isfile(os.path.join(folder, "result.json")):
        raise OpError("no result for %s in %s" % (name, d["outbox"]))
    os.makedirs(d["results"], exist_ok=True)
    final = os.path.join(d["results"], name + ".tar")
    if not os.path.isfile(final):  # a tar is renamed into place only when complete
        tmp = os.path.join(d["results"], ".%s.tar.tmp-%d" % (name, os.getpid()))
        with tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as tar:
            for dirpath, dirnames, filenames in os.walk(folder):
                dirnames.sort()
                for fn in sorted(filenames):
                    full = os.path.join(dirpath, fn)
                    rel = os.path.relpath(full, folder).replace(os.sep, "/")
                    tar.add(full, arcname=name + "/" + rel, recursive=False)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(d["results"])
    size, digest = _sha256(final)
    return {"name": name, "file": final, "size": size, "sha256": digest}


def cleanup(spec):
    root, d = _dirs(spec)
    name = _name(spec)
    removed = []
    if _remove_tree(os.path.join(d["outbox"], name)):
        removed.append("outbox")
    for key in ("results", "incoming"):
        if _remove_file(os.path.join(d[key], name + ".tar")):
            removed.append(key)
    if spec.get("inbox") and _drop_from_inbox(d, name):
        removed.append("inbox")
    for key in ("incoming", "results"):
        for fn in _listdir(d[key]):
            if fn.startswith(name + ".tar.") or fn.startswith("." + name + ".tar."):
                _remove_file(os.path.join(d[key], fn))
    return {"name": name, "removed": removed}


def _in_hand(d, name):
    hb = _read_json(d["heartbeat"]) or {}
    info = hb.get("info") or {}
    return hb.get("state") != "stopped" and info.get("batch") == name


def _drop_from_inbox(d, name):
    if _in_hand(d, name):
        return False
    removed = _remove_tree(os.path.join(d["inbox"], name))
    staging = os.path.join(d["inbox"], name + ".partial")
    if os.path.exists(staging):
        shutil.rmtree(staging, ignore_errors=True)
    return removed


def drop(spec):
    root, d = _dirs(spec)
    name = _name(spec)
    in_hand = _in_hand(d, name)
    removed = False if in_hand else _drop_from_inbox(d, name)
    _remove_file(os.path.join(d["incoming"], name + ".tar"))
    return {"name": name, "removed": removed, "in_hand": in_hand}


def tidy(spec):
    """Remove what cut transfers left: ``*.part`` uploads, ``.tmp-`` tars."""
    root, d = _dirs(spec)
    removed = []
    for key in ("incoming", "results"):
        for fn in _listdir(d[key]):
            if fn.endswith(".part") or ".tmp-" in fn:
                _remove_file(os.path.join(d[key], fn))
                removed.append(fn)
    return {"removed": removed}


def clear_kill(spec):
    root, d = _dirs(spec)
    marker = spec.get("marker") or ""
    path = d["kill_file"]
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("utf-8", "replace")
    except FileNotFoundError:
        return {"removed": False, "present": False}
    hb = _read_json(d["heartbeat"]) or {}
    if not marker or not text.startswith(marker) or hb.get("state") not in ("stopped", None):
        return {"removed": False, "present": True, "text": text[:200]}
    _remove_file(path)
    return {"removed": True, "present": False}


OPS = {"state": state, "unpack": unpack, "pack": pack, "cleanup": cleanup, "drop": drop,
       "tidy": tidy, "clear_kill": clear_kill}


def call(op, spec):
    """In-process entry (the local worker): raises RootMissing / OpError / OSError."""
    return OPS[op](spec)


def main(argv):
    if len(argv) != 2 or argv[0] not in OPS:
        sys.stderr.write("usage: hostops OP JSON (OP: %s)\n" % ", ".join(sorted(OPS)))
        return 2
    try:
        out = OPS[argv[0]](json.loads(argv[1]))
    except RootMissing as exc:
        sys.stderr.write("%s\n" % exc)
        return ROOT_MISSING
    except (OpError, OSError, tarfile.TarError, ValueError) as exc:
        sys.stderr.write("%s: %s\n" % (type(exc).__name__, exc))
        return 1
    sys.stdout.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
