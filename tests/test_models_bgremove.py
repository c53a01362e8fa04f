"""Background removal: the tiny ONNX model under $U2NET_HOME, white flattening, JPEG q90."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models_support as ms  # noqa: F401  (sets U2NET_HOME)
from pipeline.models import testprofile as testmodels
from pipeline.models.bgremove import (BackgroundRemover, BgSettings, check_model_present,
                               choose_providers, get_session)
from pipeline.core.errors import UserError


@pytest.fixture(scope="module")
def remover() -> BackgroundRemover:
    return BackgroundRemover(BgSettings(model="u2net_custom",
                                        model_path=str(testmodels.ensure_tiny_u2net())))


def test_providers_follow_the_platform():
    avail = ["CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
             "CPUExecutionProvider"]
    assert choose_providers(avail, "linux") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(avail, "win32") == ["CUDAExecutionProvider", "DmlExecutionProvider",
                                                "CPUExecutionProvider"]
    assert choose_providers(["CoreMLExecutionProvider", "CPUExecutionProvider"], "darwin") == [
        "CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["CPUExecutionProvider"], "win32") == ["CPUExecutionProvider"]
    assert BgSettings(providers="CPUExecutionProvider").provider_list() == ["CPUExecutionProvider"]


def test_tiny_model_lives_under_u2net_home_and_is_stable():
    path = testmodels.ensure_tiny_u2net()
    assert path.parent == Path(os.environ["U2NET_HOME"]) == testmodels.u2net_home()
    mtime = path.stat().st_mtime_ns
    assert testmodels.ensure_tiny_u2net() == path and path.stat().st_mtime_ns == mtime


def test_mask_depends_on_input_and_background_turns_white(remover):
    dark_left = Image.new("RGB", (64, 48), (240, 240, 240))
    dark_left.paste((30, 30, 30), (0, 0, 24, 48))
    dark_right = Image.new("RGB", (64, 48), (240, 240, 240))
    dark_right.paste((30, 30, 30), (40, 0, 64, 48))
    m1 = np.asarray(remover.session.predict(dark_left)[0], dtype=float)
    m2 = np.asarray(remover.session.predict(dark_right)[0], dtype=float)
    assert np.isfinite(m1).all() and m1.shape == (48, 64)
    assert m1[:, :10].mean() > m1[:, -10:].mean() + 50   # dark part kept
    assert m2[:, -10:].mean() > m2[:, :10].mean() + 50   # ... wherever it is
    out = np.asarray(remover.remove(dark_left))
    assert out.shape == (48, 64, 3)
    assert out[:, -8:].mean() > 245                        # background flattened onto white
    assert out[:, :8].mean() < 120                         # object kept


def test_jpeg_q90_output(remover):
    image = Image.open(io.BytesIO(ms.furniture_jpeg(3))).convert("RGB")
    jpeg = remover.remove_to_jpeg(image)
    back = Image.open(io.BytesIO(jpeg))
    assert back.format == "JPEG" and back.mode == "RGB" and back.size == image.size
    low = BackgroundRemover(BgSettings(model="u2net_custom", model_path=remover.settings.model_path,
                                       jpeg_quality=30)).remove_to_jpeg(image)
    assert len(low) < len(jpeg)


def test_one_session_per_process(remover):
    again = BackgroundRemover(BgSettings(model="u2net_custom", model_path=remover.settings.model_path))
    assert again.session is remover.session is get_session(remover.settings)


def test_custom_model_outside_u2net_home_is_refused(tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    outside.write_bytes(testmodels.tiny_u2net_bytes())
    with pytest.raises(UserError, match="must be within the models directory"):
        get_session(BgSettings(model="u2net_custom", model_path=str(outside)))


def test_missing_stock_model_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"weights missing for background model u2net: fetch "
                                        r"https://github.com/danielgatis/rembg/releases/.*/u2net.onnx"):
        check_model_present(BgSettings(model="u2net"))
    with pytest.raises(UserError, match="unknown background model"):
        check_model_present(BgSettings(model="no-such-model"))
