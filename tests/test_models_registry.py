"""The model registry: names, order, dimensions, settings and the 'weights missing' errors,
all without loading a model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, cli_env
from pipeline.models import registry as models
from pipeline.core.errors import UserError
from pipeline.models.loading import ModelSet
from pipeline.models.registry import (MODELS, VECTOR_DIMS, VECTOR_ORDER, ModelSettings,
                             fetch_instructions, get_spec, weights_present)


def test_registry_names_order_and_dims():
    assert [m.name for m in MODELS] == ["clip_vitb32", "clip_vitl14", "dinov2_base",
                                         "dinov2_large", "dinov3_base"]
    assert [m.dim for m in MODELS] == [512, 768, 768, 1024, 768]
    assert [m.name for m in MODELS if m.text] == ["clip_vitb32", "clip_vitl14"]
    assert list(VECTOR_ORDER) == ["clip_vitb32", "clip_vitb32_text", "clip_vitl14",
                                  "clip_vitl14_text", "dinov2_base", "dinov2_large", "dinov3_base"]
    assert VECTOR_DIMS == {"clip_vitb32": 512, "clip_vitb32_text": 512, "clip_vitl14": 768,
                           "clip_vitl14_text": 768, "dinov2_base": 768, "dinov2_large": 1024,
                           "dinov3_base": 768}
    assert get_spec("dinov3_base").gated and get_spec("dinov3_base").arch == "DINOv3ViTModel"
    assert get_spec("clip_vitl14").source == "laion2b_s32b_b82k"
    with pytest.raises(UserError, match="unknown model 'nope'"):
        get_spec("nope")


def test_registry_imports_no_heavy_module():
    code = ("import sys, pipeline.models.registry, pipeline.batches.batchfile, pipeline.batches.results, "
            "pipeline.models.bgremove, pipeline.models.embed, pipeline.models.loading, "
            "pipeline.models.testprofile, pipeline.stages.worker.entry, imageselector.commands.models\n"
            "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'rembg', 'onnxruntime', "
            "'numpy', 'faiss') if m in sys.modules]\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_settings_validation_and_production_root_refuses_test_models(tmp_root):
    with pytest.raises(UserError, match="models.profile must be one of"):
        ModelSettings(profile="tiny")
    with pytest.raises(UserError, match="models.precision"):
        ModelSettings(precision="fp8")
    (tmp_root.path / "imageselector.toml").write_text('[models]\nprofile = "test"\n')
    tmp_root.__dict__.pop("config", None)
    with pytest.raises(UserError, match="production root: models.profile must be production"):
        ModelSettings.from_config(tmp_root.config, root_profile=tmp_root.profile)
    # a sandbox root may use them
    (tmp_root.path / "imageselector.toml").write_text(
        '[root]\nprofile = "sandbox"\n[models]\nprofile = "test"\n')
    tmp_root.__dict__.pop("config", None)
    assert ModelSettings.from_config(tmp_root.config, tmp_root.profile).profile == "test"


def test_profile_from_environment(tmp_root, monkeypatch):
    monkeypatch.setenv("IMAGESELECTOR_MODELS_PROFILE", "test")
    assert ModelSettings.from_env().profile == "test"
    tmp_root.__dict__.pop("config", None)
    assert tmp_root.config.get("models.profile") == "test"


def test_missing_weights_say_what_to_fetch_and_where(tmp_path):
    settings = ModelSettings(profile="production", hf_cache_dir=str(tmp_path / "hub"),
                             hf_token_file="/secrets/hf_token")
    spec = get_spec("dinov3_base")
    assert not weights_present(spec, settings)
    line = fetch_instructions(spec, settings)
    assert "dinov3_base" in line and "facebook/dinov3-vitb16-pretrain-lvd1689m" in line
    assert str(tmp_path / "hub") in line and "HF_TOKEN=$(cat /secrets/hf_token)" in line
    assert "\n" not in line
    ms = ModelSet(settings, names=("clip_vitb32",))
    with pytest.raises(UserError, match=r"weights missing for clip_vitb32: fetch "
                                        r"laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        ms.check_weights()
    with pytest.raises(UserError, match="weights missing for clip_vitb32"):
        ms.get("clip_vitb32")


def test_weights_found_in_a_local_cache(tmp_path):
    """A cache laid out as huggingface_hub lays it out counts as present (no network)."""
    spec = get_spec("dinov2_base")
    repo = tmp_path / "hub" / "models--facebook--dinov2-base"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for name in ("config.json", "preprocessor_config.json"):
        (snap / name).write_text("{}")
    settings = ModelSettings(profile="production", hf_cache_dir=str(tmp_path / "hub"))
    assert not weights_present(spec, settings)          # the weights file itself is missing
    (snap / "model.safetensors").write_bytes(b"x")
    assert weights_present(spec, settings)
    detail = ModelSet(settings, names=("dinov2_base",)).fingerprint_detail()
    assert detail["models"]["dinov2_base"]["revision"] == ["abc123"]


def test_fingerprint_names_profile_precision_and_models():
    a = ModelSet(ModelSettings(profile="test"))
    b = ModelSet(ModelSettings(profile="test", precision="bf16"))
    c = ModelSet(ModelSettings(profile="random"))
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3
    assert a.fingerprint() == ModelSet(ModelSettings(profile="test")).fingerprint()
    assert list(a.fingerprint_detail()["models"]) == [m.name for m in MODELS]
    assert a.loaded_names() == []  # nothing loaded to compute it


def test_models_command_lists_the_registry(tmp_path):
    env = cli_env(HF_HUB_CACHE=str(tmp_path / "hub"))
    out = subprocess.run([sys.executable, "-m", "imageselector", "models", "--json",
                          "--root", str(tmp_path / "root")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert [(m["name"], m["library"], m["dim"], m["text"], m["weights_present"])
            for m in listing["models"]] == [
        ("clip_vitb32", "open_clip", 512, True, False), ("clip_vitl14", "open_clip", 768, True, False),
        ("dinov2_base", "transformers", 768, False, False),
        ("dinov2_large", "transformers", 1024, False, False),
        ("dinov3_base", "transformers", 768, False, False)]
    assert all(str(tmp_path / "hub") in m["fetch"] for m in listing["models"])
    text = subprocess.run([sys.executable, "-m", "imageselector", "models",
                           "--root", str(tmp_path / "root")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert text.returncode == 0 and "MISSING" in text.stdout and "dinov2_large" in text.stdout
