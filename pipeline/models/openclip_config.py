"""open_clip architectures that are not built into open_clip: the production model's own
``open_clip_config.json`` from the Hugging Face cache, and the test profile's tiny configs.

Production reads the architecture from the cached repo (as open_clip's ``hf-hub:`` ids do)
rather than open_clip's built-in name, but without open_clip's Hugging Face calls: the file
is the one ``cached_weight_files`` found, so the config and the weights come from the same
snapshot and nothing can reach the network. open_clip is imported only when registering.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from pipeline.core.errors import UserError

_REQUIRED = ("embed_dim", "vision_cfg", "text_cfg")


def register(name: str, model_cfg: dict) -> str:
    """Register ``model_cfg`` under ``name`` through open_clip's public add_model_config."""
    import open_clip

    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(model_cfg))
            open_clip.add_model_config(path)  # read now; the file is not needed afterwards
    return name


def read_cached(path: str) -> dict:
    """The ``model_cfg`` of a repo's open_clip_config.json; a bad file is a UserError naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read open_clip's model config ({exc})") from None
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or not all(k in model_cfg for k in _REQUIRED):
        raise UserError(f"{path}: not an open_clip model config (needs model_cfg with "
                        f"{', '.join(_REQUIRED)})")
    return model_cfg


def register_cached(spec_name: str, path: str) -> str:
    """Register the cached config of a model under a name unique to its contents."""
    model_cfg = read_cached(path)
    digest = hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    return register(f"imageselector-{spec_name}-{digest}", model_cfg)
