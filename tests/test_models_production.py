"""The production model path, for every model: a Hugging Face cache laid out as `hf download`
leaves it (the test profile's tiny random weights and configs under the real repos and file
names) and rembg's stock u2net.onnx under $U2NET_HOME, loaded by the worker's own code with
HF_HUB_OFFLINE=1 and every network connection refused; the `hf download` line for a missing
file; torch before faiss in every process that loads both; and the unload rule."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models_support as ms
from conftest import REPO, cli_env
from pipeline.core.errors import UserError
from pipeline.core.root import Root
from pipeline.models.loading import ModelSet
from pipeline.models.registry import (MODELS, ModelSettings, auto_unload_threshold_bytes,
                                      get_spec, unload_decision)

pytestmark = pytest.mark.timeout(240)
TEXT = "Oak table. oak, steel"

# Runs in a fresh process: no network at all (any IP connection raises and is recorded),
# then the worker's own construction of its models and background remover from a
# production root, one image and one text per model, and one real batch.
PROBE = r"""
import hashlib, io, json, socket, sys
attempts = []
_connect = socket.socket.connect
def _refuse(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        attempts.append(repr(address))
        raise OSError("network refused by the test")
    return _connect(self, address)
socket.socket.connect = _refuse
socket.socket.connect_ex = lambda self, address: _refuse(self, address) or 0
sys.path.insert(0, "tests")
import numpy as np
from PIL import Image
import models_support as ms
from pipeline.batches.batchfile import WorkerDirs
from pipeline.batches.results import read_result
from pipeline.core.root import Root
from pipeline.models.batch_run import DONE, build_embedder, process_batch

root = Root(sys.argv[1])
embedder = build_embedder(root)
image = Image.open(io.BytesIO(ms.furniture_jpeg(3))).convert("RGB")
out = {"profile": embedder.models.settings.profile, "models": {}}
for name in embedder.models.names:
    model = embedder.models.get(name)
    entry = {"image": model.embed_images([image])[0].tolist(), "identity": model.identity}
    if model.spec.text:
        entry["text"] = model.embed_texts([sys.argv[2]])[0].tolist()
        cfg = model.module.visual.preprocess_cfg
        entry["mean"], entry["std"] = list(cfg["mean"]), list(cfg["std"])
    out["models"][name] = entry
session = embedder.remover.session
out["bg"] = {"session": type(session).__name__,
             "cutout": hashlib.sha256(np.asarray(embedder.remover.remove(image)).tobytes()).hexdigest()}
dirs = WorkerDirs.under(root.path).ensure()
_, rows = ms.make_batch(dirs.inbox, "b0001", 3)
out["batch"] = process_batch(dirs, dirs.inbox / "b0001", embedder) == DONE
out["batch_ids"] = read_result(dirs.outbox / "b0001", manifest=rows).ids == [r.key for r in rows]
out["attempts"] = attempts
print(json.dumps(out))
"""


def production_root(path: Path, hub: Path) -> Root:
    root = Root(path).ensure()
    (root.path / "imageselector.toml").write_text(
        f'[root]\nprofile = "production"\n[models]\nprofile = "production"\n'
        f'device = "cpu"\nhf_cache_dir = "{hub}"\n[worker]\nbatch_size = 2\n')
    return Root(path).ensure()


def production_env(u2net_home: Path) -> dict:
    env = cli_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", U2NET_HOME=str(u2net_home))
    for name in ("IMAGESELECTOR_MODELS_PROFILE", "HF_HUB_CACHE", "HF_HOME", "REMBG_HOME",
                 "MODEL_CHECKSUM_DISABLED"):
        env.pop(name, None)
    return env


def _image(seed: int) -> Image.Image:
    return Image.open(io.BytesIO(ms.furniture_jpeg(seed))).convert("RGB")


@pytest.fixture(scope="module")
def tiny() -> ModelSet:
    return ms.test_embedder().models


@pytest.fixture(scope="module")
def probed(tmp_path_factory, tiny):
    base = tmp_path_factory.mktemp("production")
    hub = ms.production_hf_cache(base / "hub", tiny)
    u2net_home = base / "u2net"
    ms.stock_u2net(u2net_home)
    root = production_root(base / "root", hub)
    out = subprocess.run([sys.executable, "-c", PROBE, str(root.path), TEXT], cwd=REPO,
                         env=production_env(u2net_home), capture_output=True, text=True,
                         timeout=200)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), hub


def test_production_never_tries_the_network_even_when_not_told_offline(probed):
    """Workers do not set HF_HUB_OFFLINE: the production loaders read the cache's files
    themselves (open_clip) or with local_files_only (transformers)."""
    out, hub = probed
    root = production_root(hub.parent / "root-online", hub)
    env = production_env(hub.parent / "u2net")
    env.pop("HF_HUB_OFFLINE")
    env.pop("TRANSFORMERS_OFFLINE")
    run = subprocess.run([sys.executable, "-c", PROBE, str(root.path), TEXT], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=200)
    assert run.returncode == 0, run.stderr[-4000:]
    online = json.loads(run.stdout.strip().splitlines()[-1])
    assert online["attempts"] == [] and online["batch"]
    assert online["models"]["dinov3_base"]["image"] == out["models"]["dinov3_base"]["image"]


def test_the_cache_is_laid_out_as_hf_download_leaves_it(probed):
    _, hub = probed
    for spec in MODELS:
        repo = hub / ("models--" + spec.hf_repo.replace("/", "--"))
        revision = (repo / "refs" / "main").read_text()
        assert len(revision) == 40
        links = sorted((repo / "snapshots" / revision).iterdir())
        assert links and all(p.is_symlink() and not os.path.isabs(os.readlink(p)) for p in links)
        assert {p.resolve().parent for p in links} == {(repo / "blobs").resolve()}
        for group in spec.weight_files:
            assert any(p.name in group for p in links), (spec.name, group)
    clip = {spec.name: {p.name for p in (hub / ("models--" + spec.hf_repo.replace("/", "--"))
                                         / "snapshots").glob("*/*")}
            for spec in MODELS if spec.library == "open_clip"}
    assert clip == {"clip_vitb32": {"open_clip_config.json", "open_clip_model.safetensors"},
                    "clip_vitl14": {"open_clip_config.json", "open_clip_pytorch_model.bin"}}


def test_every_model_loads_and_embeds_offline_through_the_worker(probed, tiny):
    out, _ = probed
    assert out["attempts"] == []               # nothing tried the network
    assert out["profile"] == "production"
    assert list(out["models"]) == [m.name for m in MODELS]
    image = _image(3)
    for spec in MODELS:
        got = out["models"][spec.name]
        assert got["identity"]["revision"] == [ms._revision(spec.hf_repo)]
        vec = np.asarray(got["image"], dtype=np.float32)
        assert vec.shape == (spec.dim,)
        reference = tiny.get(spec.name)
        if spec.library == "open_clip":
            _check_clip(spec, got, reference, image)
        else:   # the cached processor and weights are the test profile's: the same vector
            np.testing.assert_allclose(vec, reference.embed_images([image])[0], atol=1e-5)
    assert out["batch"] and out["batch_ids"]


def _check_clip(spec, got, reference, image):
    """Production uses the tag's own normalisation (0.5 for ViT-L-14 laion2b, CLIP's for
    ViT-B-32) and the cached weights: the tiny model's vector under that preprocessing."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    tag = open_clip.get_pretrained_cfg(spec.arch, spec.source)
    assert got["mean"] == pytest.approx(list(tag["mean"]))
    assert got["std"] == pytest.approx(list(tag["std"]))
    cfg = dict(reference.module.visual.preprocess_cfg, mean=tag["mean"], std=tag["std"])
    pixels = image_transform_v2(PreprocessCfg(**cfg), is_train=False)(image)
    np.testing.assert_allclose(np.asarray(got["image"], dtype=np.float32),
                               reference.embed_pixels(pixels.unsqueeze(0))[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["text"], dtype=np.float32),
                               reference.embed_texts([TEXT])[0], atol=1e-5)


def test_laion_vitl14_normalisation_differs_from_vitb32(probed):
    """The check above is meaningful: the two tags' normalisations differ."""
    out, _ = probed
    assert out["models"]["clip_vitl14"]["mean"] != out["models"]["clip_vitb32"]["mean"]


def test_stock_u2net_under_u2net_home_is_used_as_it_is(probed):
    """rembg's stock session opens $U2NET_HOME/u2net.onnx without a download (the installed
    rembg opens an existing file as it is; doctor compares the MD5 older releases check)."""
    out, _ = probed
    assert out["bg"]["session"] == "U2netSession"
    cut = np.asarray(ms.test_embedder().remover.remove(_image(3)))   # the same tiny model
    assert out["bg"]["cutout"] == hashlib.sha256(cut.tobytes()).hexdigest()


MISSING = [("clip_vitb32", "open_clip_model.safetensors"), ("clip_vitl14", "open_clip_config.json"),
           ("dinov2_base", "preprocessor_config.json"), ("dinov2_large", "model.safetensors"),
           ("dinov3_base", "config.json")]


@pytest.mark.parametrize("name,filename", MISSING, ids=[m for m, _ in MISSING])
def test_a_missing_file_gives_the_hf_download_line(tmp_path, tiny, name, filename):
    hub = ms.production_hf_cache(tmp_path / "hub", tiny, skip=((name, filename),))
    settings = ModelSettings(profile="production", device="cpu", hf_cache_dir=str(hub),
                             hf_token_file="/secrets/hf_token")
    spec = get_spec(name)
    with pytest.raises(UserError) as err:
        ModelSet(settings).check_weights()
    line = str(err.value)
    assert line.startswith(f"weights missing for {name}:") and "\n" not in line
    assert f"hf download {spec.hf_repo} " in line and filename in line.split("hf download")[1]
    assert f"--cache-dir {hub}" in line
    assert ("HF_TOKEN=$(cat /secrets/hf_token)" in line) == spec.gated
    with pytest.raises(UserError, match=f"weights missing for {name}"):
        ModelSet(settings, names=(name,)).get(name)
    others = tuple(m.name for m in MODELS if m.name != name)
    ModelSet(settings, names=others).check_weights()   # the rest of the cache is complete


# ---- torch before faiss -----------------------------------------------------------------

# sitecustomize for the child processes: record the first import of torch and of faiss.
IMPORT_HOOK = """
import os, sys
_out = os.environ.get("IMAGESELECTOR_IMPORT_ORDER")
if _out:
    class _FirstImports:
        seen = set()
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in ("torch", "faiss") and top not in self.seen:
                self.seen.add(top)
                with open(_out, "a") as fh:
                    fh.write(top + "\\n")
            return None
    sys.meta_path.insert(0, _FirstImports())
"""


def _first_imports(tmp_path: Path, argv: list[str]) -> list[str]:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(IMPORT_HOOK)
    order = tmp_path / f"order-{len(list(tmp_path.glob('order-*')))}.txt"
    env = cli_env(IMAGESELECTOR_IMPORT_ORDER=order,
                  PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]))
    out = subprocess.run([sys.executable, "-m", "imageselector", *argv], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-2000:]
    return order.read_text().split() if order.exists() else []


@pytest.fixture(scope="module")
def indexed_root(tmp_path_factory, tiny):
    """A sandbox root with a few listings in the index store (faiss files on disk)."""
    from pipeline.index import IndexStore
    from tests.index_support import DIMS, FP, ORDER, add_images, add_listing_rows, open_db

    root = ms.sandbox_root(tmp_path_factory.mktemp("indexed") / "root")
    ids = np.array([(700 + i, 1) for i in range(4)], dtype=np.int64)
    rng = np.random.default_rng(3)
    vecs = {}
    for m in ORDER:
        v = rng.standard_normal((len(ids), DIMS[m])).astype("float32")
        vecs[m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    conn = open_db(root)
    for i in range(len(ids)):
        add_listing_rows(conn, root, 700 + i, 1, f"walnut chair {i}", 1000, "shop")
    add_images(conn, 1, ids)
    store = IndexStore.for_root(root)
    store.open(conn)
    store.import_batch(1, ids, vecs, FP, conn)
    conn.close()
    return root


@pytest.mark.parametrize("kind", ["text", "image"])
def test_search_imports_torch_before_faiss(tmp_path, indexed_root, kind):
    query = ["--text", "walnut chair"] if kind == "text" else ["--image", str(tmp_path / "q.jpg")]
    (tmp_path / "q.jpg").write_bytes(ms.furniture_jpeg(9))
    order = _first_imports(tmp_path, ["--root", str(indexed_root.path), "search", *query,
                                      "-k", "2", "--json"])
    assert order == ["torch", "faiss"]


def test_worker_imports_torch_before_any_faiss(tmp_path):
    root = ms.sandbox_root(tmp_path / "root")
    dirs = ms.worker_dirs(root)
    ms.make_batch(dirs.inbox, "b0200", 2)
    order = _first_imports(tmp_path, ["--root", str(root.path), "run", "worker", "--once"])
    assert order in (["torch"], ["torch", "faiss"])


# ---- unload_between_models --------------------------------------------------------------

def test_unload_follows_the_device_memory_by_default():
    assert ModelSettings().unload_between_models == "auto"
    weights = sum(m.weight_mb for m in MODELS) * 1_000_000
    threshold = auto_unload_threshold_bytes()
    assert threshold == 2 * weights
    gb = 1_000_000_000
    assert unload_decision("auto", 8 * gb)[0] is True       # an 8 GB GPU or Mac
    assert unload_decision("auto", 12 * gb)[0] is False     # 12 GB and up keep all five
    assert unload_decision("auto", threshold - 1)[0] is True
    assert unload_decision("auto", threshold)[0] is False
    assert unload_decision("auto", None)[0] is True         # unknown: the safe side
    assert unload_decision("always", 512 * gb)[0] is True
    assert unload_decision("never", 1 * gb)[0] is False
    assert "one model at a time" in unload_decision("auto", 8 * gb)[1]


def test_unload_setting_values_and_the_cpu_rule(monkeypatch, tmp_root):
    import psutil

    assert ModelSettings(unload_between_models=True).unload_between_models == "always"
    assert ModelSettings(unload_between_models="false").unload_between_models == "never"
    with pytest.raises(UserError, match="models.unload_between_models must be one of auto, always"):
        ModelSettings(unload_between_models="sometimes")
    monkeypatch.setenv("IMAGESELECTOR_MODELS_UNLOAD_BETWEEN_MODELS", "always")
    tmp_root.__dict__.pop("config", None)
    assert ModelSettings.from_config(tmp_root.config).unload_between_models == "always"
    # in the root's file: a TOML true is "always"; a wrong value names the words it takes
    monkeypatch.delenv("IMAGESELECTOR_MODELS_UNLOAD_BETWEEN_MODELS")
    for written, meant in (("true", "always"), ("false", "never"), ('"never"', "never")):
        tmp_root.config_path.write_text(f"[models]\nunload_between_models = {written}\n")
        tmp_root.__dict__.pop("config", None)
        assert ModelSettings.from_config(tmp_root.config).unload_between_models == meant
    tmp_root.config_path.write_text("[models]\nunload_between_models = 3\n")
    tmp_root.__dict__.pop("config", None)
    with pytest.raises(UserError, match=r"imageselector.toml: models.unload_between_models must "
                                        r"be one of auto, always, never, got 3$"):
        ModelSettings.from_config(tmp_root.config)
    # on the CPU the memory is the system's
    cpu = ModelSet(ModelSettings(profile="test", device="cpu"))
    small = psutil.virtual_memory().total < auto_unload_threshold_bytes(cpu.specs())
    assert cpu.unload_between_models is small
    assert cpu.loaded_names() == []
