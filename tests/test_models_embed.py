"""The test-profile models: registry dimensions, unit norms, determinism, shared CLIP space."""
from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import models_support as ms
from conftest import REPO, cli_env
from pipeline.models.loading import ModelSet
from pipeline.models.registry import MODELS, ModelSettings


@pytest.fixture(scope="module")
def models() -> ModelSet:
    return ms.test_embedder().models


def _image(seed: int) -> Image.Image:
    return Image.open(io.BytesIO(ms.furniture_jpeg(seed))).convert("RGB")


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: s.name)
def test_model_gives_registry_dim_unit_norm_float32(models, spec):
    vecs = models.get(spec.name).embed_images([_image(1), _image(2), _image(3)])
    assert vecs.shape == (3, spec.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vecs[0], vecs[1])  # different images, different vectors


def test_same_image_same_vector_twice(models):
    for spec in MODELS:
        m = models.get(spec.name)
        a = m.embed_images([_image(7)])
        b = m.embed_images([_image(7), _image(8)])[:1]  # also independent of the batch
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_clip_text_and_image_share_one_space(models):
    for spec in MODELS:
        m = models.get(spec.name)
        if not spec.text:
            with pytest.raises(Exception, match="no text tower"):
                m.embed_texts(["x"])
            continue
        texts = m.embed_texts(["Oak table. oak, steel", "Velvet sofa. velvet"])
        image = m.embed_images([_image(1)])
        assert texts.shape == (2, spec.dim) and texts.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
        sims = texts @ image[0]  # comparable: same dim, both unit length
        assert np.all(np.abs(sims) <= 1.0 + 1e-5)
        assert not np.allclose(texts[0], texts[1])


def test_models_load_lazily_and_once(models):
    fresh = ModelSet(ModelSettings(profile="test", device="cpu"), names=("dinov3_base",))
    assert fresh.loaded_names() == []
    first = fresh.get("dinov3_base")
    assert fresh.get("dinov3_base") is first and fresh.loaded_names() == ["dinov3_base"]
    fresh.unload("dinov3_base")
    assert fresh.loaded_names() == []
    again = fresh.get("dinov3_base")  # reloaded: same seeded weights
    np.testing.assert_allclose(first.embed_images([_image(3)]), again.embed_images([_image(3)]),
                               atol=1e-6)


def test_another_process_builds_the_same_weights(models):
    """Workers on different hosts must agree: the test models are seeded."""
    code = ("import io, sys, numpy as np; sys.path.insert(0, 'tests')\n"
            "import models_support as ms\n"
            "from PIL import Image\n"
            "from pipeline.models.loading import ModelSet\n"
            "from pipeline.models.registry import ModelSettings\n"
            "m = ModelSet(ModelSettings(profile='test', device='cpu'))\n"
            "im = Image.open(io.BytesIO(ms.furniture_jpeg(5))).convert('RGB')\n"
            "v = np.concatenate([m.get(n).embed_images([im])[0] for n in "
            "('clip_vitb32', 'dinov2_base')] + [m.get('clip_vitl14').embed_texts(['a chair'])[0]])\n"
            "sys.stdout.write(' '.join(f'{x:.6f}' for x in v))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    theirs = np.array([float(x) for x in out.stdout.split()])
    ours = np.concatenate([models.get("clip_vitb32").embed_images([_image(5)])[0],
                           models.get("dinov2_base").embed_images([_image(5)])[0],
                           models.get("clip_vitl14").embed_texts(["a chair"])[0]])
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32(models):
    bf16 = ModelSet(ModelSettings(profile="test", device="cpu", precision="bf16"),
                    names=("dinov2_base",))
    a = models.get("dinov2_base").embed_images([_image(4)])
    b = bf16.get("dinov2_base").embed_images([_image(4)])
    assert b.dtype == np.float32
    cos = float(a[0] @ b[0])
    assert 0.98 < cos <= 1.0 + 1e-5


def test_production_path_loads_from_a_local_cache_only(tmp_path, models):
    """The production loader reads a Hugging Face cache laid out as `hf download` leaves it
    (here a tiny DINOv2 saved locally: no network, no real weights needed)."""
    import transformers

    from pipeline.models import testprofile as testmodels
    from pipeline.models.registry import get_spec

    spec = get_spec("dinov2_base")
    repo = tmp_path / "hub" / "models--facebook--dinov2-base"
    snap = repo / "snapshots" / "rev1"
    tiny = models.get("dinov2_base")
    tiny.module.save_pretrained(snap)
    transformers.BitImageProcessor(**testmodels._processor_config(spec, "test")).save_pretrained(snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("rev1")
    prod = ModelSet(ModelSettings(profile="production", device="cpu",
                                  hf_cache_dir=str(tmp_path / "hub")), names=("dinov2_base",))
    prod.check_weights()
    loaded = prod.get("dinov2_base")
    assert loaded.identity["revision"] == ["rev1"]
    np.testing.assert_allclose(loaded.embed_images([_image(6)]), tiny.embed_images([_image(6)]),
                               atol=1e-5)
    assert prod.fingerprint_detail()["models"]["dinov2_base"]["revision"] == ["rev1"]
