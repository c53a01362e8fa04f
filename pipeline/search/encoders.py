"""Query encoders: a text or an image file to per-index query vectors with the registry's
models, and loading those models and the background remover (issue 7)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import UserError

CLIP_IMAGE = ("clip_vitb32", "clip_vitl14")


def image_models() -> list[str]:
    from pipeline.models.registry import MODEL_NAMES

    return list(MODEL_NAMES)


def encode_text(text: str, model_set, models: list[str]) -> dict[str, np.ndarray]:
    """Both CLIP text towers; ``clip_x`` searches the image index with the text vector,
    ``clip_x_text`` the text index."""
    out = {}
    for m in models:
        base = m[:-len("_text")] if m.endswith("_text") else m
        if base not in CLIP_IMAGE:
            continue
        if base not in out:
            out[base] = model_set.get(base).embed_texts([text])[0]
        out[m] = out[base]
    return {m: out[m] for m in models if m in out}


def open_picture(path: Path):
    """An image file as an RGB picture; a one-line error for a missing or unreadable file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"image {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{path} is not a readable image ({exc})") from None


def encode_picture(image, model_set, remover, models: list[str]) -> dict[str, np.ndarray]:
    """The pipeline's background removal, then each image model."""
    image = remover.remove(image)
    return {m: model_set.get(m).embed_images([image])[0] for m in models if not m.endswith("_text")}


def encode_image(path: Path, model_set, remover, models: list[str]) -> dict[str, np.ndarray]:
    return encode_picture(open_picture(Path(path)), model_set, remover, models)


def combine_images(per_image: list[dict[str, np.ndarray]], how: str) -> dict[str, np.ndarray]:
    """Several query images as per-model queries: ``mean`` of the normalised vectors (one
    vector), or ``fuse``: every image's vector (searched one by one, the lists fused)."""
    out = {}
    for m in per_image[0]:
        vecs = np.stack([np.asarray(v[m], dtype="float32") for v in per_image])
        vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        if how == "mean":
            v = vecs.mean(axis=0)
            vecs = (v / max(float(np.linalg.norm(v)), 1e-12))[None, :]
        out[m] = vecs.astype("float32")
    return out


def load_model_set(root):
    from pipeline.models.loading import ModelSet
    from pipeline.models.registry import ModelSettings

    return ModelSet(ModelSettings.from_config(root.config, root.profile))


def load_remover(root):
    from pipeline.models.bgremove import BackgroundRemover, settings_from_config

    return BackgroundRemover(settings_from_config(root.config, root.config.get("models.profile")))
