"""The doctor's probe of one worker host, run there by the host's own Python in one command
(``python -c``, over the worker's transport), so it must work with the standard library
alone until the project is found: it reports the Python and its venv, the checkout's commit,
the root and its free disk, then, from the project's own checkout there, every model's
weights (pipeline/models/listing.py), the background model file and its checksum, and the
device the models will use. Prints one JSON line after MARK; each part that fails says why
instead of stopping the rest.
"""
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys

MARK = "DOCTOR-PROBE "


def git_head(checkout):
    """(commit, error) of a checkout: `git rev-parse HEAD`, else read .git by hand."""
    error = None
    try:
        r = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=30, stdin=subprocess.DEVNULL)
        if r.returncode == 0:
            return r.stdout.strip(), None
        error = (r.stderr or r.stdout).strip()[:200]
    except (OSError, subprocess.SubprocessError) as exc:
        error = f"git: {exc}"
    git = os.path.join(checkout, ".git")
    try:
        with open(os.path.join(git, "HEAD")) as f:
            head = f.read().strip()
        if not head.startswith("ref: "):
            return head, None
        ref = head[5:]
        if os.path.isfile(os.path.join(git, ref)):
            with open(os.path.join(git, ref)) as f:
                return f.read().strip(), None
        with open(os.path.join(git, "packed-refs")) as f:
            for line in f:
                if line.strip().endswith(" " + ref):
                    return line.split()[0], None
    except OSError:
        pass
    return None, error


def md5_file(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def background_model(root, profile):
    """The rembg model the worker will use: present, and for a stock model the MD5 that
    rembg's own download code expects (else rembg would fetch it again at the first batch)."""
    import inspect

    from pipeline.core.errors import UserError
    from pipeline.models.bgremove import (check_model_present, settings_from_config, stock_model_dir,
                                          stock_model_file)

    if profile != "production":
        return {"model": "tiny test model", "present": True, "stock": False}
    settings = settings_from_config(root.config, profile)
    out = {"model": settings.model, "stock": not settings.model.endswith("_custom")}
    try:
        check_model_present(settings)
    except UserError as exc:
        out.update(present=False, fetch=str(exc))
        return out
    out["present"] = True
    if not out["stock"]:
        out["path"] = os.path.expanduser(settings.model_path)
        return out
    from rembg.sessions import sessions_class

    cls = next(sc for sc in sessions_class if sc.name() == settings.model)
    path = stock_model_file(cls, f"{settings.model}.onnx")
    out["path"] = path
    found = re.findall(r"md5:([0-9a-f]{32})", inspect.getsource(cls.download_models))
    out["expected_md5"] = found[0] if len(found) == 1 else None
    out["md5"] = md5_file(path) if path else None
    out["model_dir"] = stock_model_dir(cls)
    return out


def device(root):
    from pipeline.models.bgremove import choose_providers
    from pipeline.models.loading import choose_device
    from pipeline.models.registry import ModelSettings

    settings = ModelSettings.from_config(root.config)
    out = {"wanted": settings.device, "providers": choose_providers()}
    out["device"] = choose_device(settings.device)
    if out["device"] == "cuda":
        import torch

        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _part(out, key, fn, *args):
    try:
        out[key] = fn(*args)
    except Exception as exc:  # each part reports its own failure; the rest still runs
        out[key] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def probe(params):
    checkout, root_path = params["checkout"], params["root"]
    out = {"python": platform.python_version(), "executable": sys.executable,
           "venv": sys.prefix != sys.base_prefix, "os": platform.system(),
           "checkout": checkout, "checkout_exists": os.path.isdir(checkout),
           "root": root_path, "root_exists": os.path.isdir(root_path)}
    if out["checkout_exists"]:
        out["commit"], out["commit_error"] = git_head(checkout)
    if out["root_exists"]:
        du = shutil.disk_usage(root_path)
        out["disk_free"], out["disk_total"] = du.free, du.total
    if not out["checkout_exists"]:
        return out
    sys.path.insert(0, checkout)
    try:
        from pipeline.core.root import Root

        root = Root(root_path)
        profile = root.profile
    except Exception as exc:
        out["project_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return out
    out["profile"] = profile

    def listing():
        from pipeline.models.listing import model_listing

        return model_listing(root)

    def floor():
        from pipeline.core.diskfloor import floor_of

        f = floor_of(root.config, root_path)
        return {"bytes": f.bytes, "key": f.key}

    if out["root_exists"]:
        _part(out, "floor", floor)
    _part(out, "models", listing)
    _part(out, "background", background_model, root, profile)
    _part(out, "device", device, root)
    return out


if __name__ == "__main__":
    params = json.loads(base64.b64decode(sys.argv[1]).decode("utf-8"))
    result = probe(params)
    sys.stdout.flush()
    print(MARK + json.dumps(result), flush=True)
