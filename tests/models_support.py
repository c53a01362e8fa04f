"""Shared helpers for the models and worker tests: test-profile roots, small images, batches,
and one test-profile Embedder per test process (the models load once)."""
from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path

from pipeline.batches.batchfile import ManifestRow, WorkerDirs, write_batch

# rembg only accepts a custom model under $U2NET_HOME: give the tests their own.
if not os.environ.get("U2NET_HOME"):
    os.environ["U2NET_HOME"] = tempfile.mkdtemp(prefix="imageselector-u2net-")

TEST_ROOT_TOML = """\
[root]
profile = "sandbox"

[models]
profile = "test"
device = "cpu"

[worker]
batch_size = 4
prep_threads = 2
prefetch_images = 8
poll_s = 0.2
"""


def sandbox_root(path: Path):
    """A root using the test-profile models."""
    from pipeline.core.root import Root

    path.mkdir(parents=True, exist_ok=True)
    (path / "imageselector.toml").write_text(TEST_ROOT_TOML)
    return Root(path).ensure()


def furniture_jpeg(seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    """A light background with a dark "piece of furniture" placed by ``seed``."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", size, (235, 232, 228))
    draw = ImageDraw.Draw(image)
    w, h = size
    x0, y0 = rng.randrange(0, w // 2), rng.randrange(0, h // 2)
    colour = tuple(rng.randrange(20, 140) for _ in range(3))
    draw.rectangle([x0, y0, x0 + w // 3 + rng.randrange(w // 4), y0 + h // 3], fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def make_rows(n: int, first_listing: int = 1000) -> list[ManifestRow]:
    # Two images per listing, so texts repeat as in real batches.
    return [ManifestRow(first_listing + i // 2, 50_000 + i,
                        f"Oak table {i // 2}. oak, steel") for i in range(n)]


def make_batch(inbox: Path, batch_id: str, n: int, bad: dict[int, bytes] | None = None):
    """A complete batch of ``n`` images; ``bad[i]`` replaces image i's bytes."""
    rows = make_rows(n)
    bad = bad or {}

    def source(row: ManifestRow) -> bytes:
        i = rows.index(row)
        return bad.get(i, furniture_jpeg(i))

    inbox.mkdir(parents=True, exist_ok=True)
    return write_batch(inbox, batch_id, rows, source), rows


_embedder = None


def test_embedder(root=None):
    """The test-profile Embedder, built once per process (models load once)."""
    global _embedder
    if _embedder is None:
        from pipeline.models.batch_run import build_embedder

        root = root or sandbox_root(Path(tempfile.mkdtemp(prefix="imageselector-models-")))
        _embedder = build_embedder(root)
    return _embedder


def worker_dirs(root) -> WorkerDirs:
    return WorkerDirs.under(root.path).ensure()


# ---- a production model cache, laid out as `hf download` leaves it ----------------------

# The weights file of each open_clip model in the cache built below: the pretrained tags
# name the repo's default file (open_clip_pytorch_model.bin, with open_clip_model.safetensors
# preferred); one model of each, so production is proven with both names.
CLIP_WEIGHT_FILES = {"clip_vitb32": "open_clip_model.safetensors",
                     "clip_vitl14": "open_clip_pytorch_model.bin"}


def _git_blob_sha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def put_hf_file(hub: Path, repo_id: str, revision: str, filename: str, data: bytes,
                lfs: bool) -> Path:
    """One file of a repo as huggingface_hub caches it: the content in blobs/<etag> (the
    sha256 for an LFS file, the git blob sha1 otherwise), a relative symlink from
    snapshots/<revision>/<filename>, refs/main naming the revision, and the lock file."""
    import hashlib

    folder = "models--" + repo_id.replace("/", "--")
    repo = hub / folder
    etag = hashlib.sha256(data).hexdigest() if lfs else _git_blob_sha1(data)
    blob = repo / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    link = repo / "snapshots" / revision / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)  # no newline, as huggingface_hub writes it
    locks = hub / ".locks" / folder
    locks.mkdir(parents=True, exist_ok=True)
    (locks / f"{etag}.lock").touch()
    return link


def _revision(repo_id: str) -> str:
    import hashlib

    return hashlib.sha1(f"tiny {repo_id}".encode()).hexdigest()  # a 40-hex commit id


def _open_clip_files(spec, tiny) -> dict[str, tuple[bytes, bool]]:
    import json

    import open_clip
    import torch

    from pipeline.models import testprofile

    tag = open_clip.get_pretrained_cfg(spec.arch, spec.source)
    config = {"model_cfg": testprofile.tiny_clip_config(spec),
              "preprocess_cfg": {"mean": list(tag["mean"]), "std": list(tag["std"])}}
    state = {k: v.detach().contiguous().clone() for k, v in tiny.module.state_dict().items()}
    name = CLIP_WEIGHT_FILES[spec.name]
    if name.endswith(".safetensors"):
        from safetensors.torch import save

        weights = save(state)
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        weights = buf.getvalue()
    return {"open_clip_config.json": (json.dumps(config, indent=2).encode(), False),
            name: (weights, True)}


def _transformers_files(spec, tiny) -> dict[str, tuple[bytes, bool]]:
    from pipeline.models import testprofile

    _, processor = testprofile.transformers_config(spec, "test")
    with tempfile.TemporaryDirectory() as tmp:
        tiny.module.save_pretrained(tmp)           # config.json, model.safetensors
        processor.save_pretrained(tmp)             # preprocessor_config.json
        return {name: ((Path(tmp) / name).read_bytes(), name.endswith(".safetensors"))
                for name in ("config.json", "preprocessor_config.json", "model.safetensors")}


def production_hf_cache(hub: Path, models=None, skip: tuple[str, ...] = ()) -> Path:
    """Every registry model (or ``models``: a ModelSet of the test profile) in a Hugging Face
    cache under ``hub``, with the test profile's tiny random weights and tiny configs under
    the real repos and file names (the gated DINOv3 repo is cached the same way). ``skip``:
    (model name, file name) pairs left out, as a partial download leaves them."""
    from pipeline.models.registry import MODELS

    models = models or test_embedder().models
    for spec in MODELS:
        tiny = models.get(spec.name)
        files = (_open_clip_files(spec, tiny) if spec.library == "open_clip"
                 else _transformers_files(spec, tiny))
        for filename, (data, lfs) in files.items():
            if (spec.name, filename) not in skip:
                put_hf_file(hub, spec.hf_repo, _revision(spec.hf_repo), filename, data, lfs)
    return hub


def stock_u2net(home: Path) -> Path:
    """The tiny background model under rembg's stock name, where rembg looks ($U2NET_HOME/u2net.onnx)."""
    from pipeline.models import testprofile

    home.mkdir(parents=True, exist_ok=True)
    path = home / "u2net.onnx"
    path.write_bytes(testprofile.tiny_u2net_bytes())
    return path
