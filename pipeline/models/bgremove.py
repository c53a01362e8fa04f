"""Background removal with rembg: one session per process, flattened onto white, JPEG q90.

The session is created on first use and shared by every thread of the process
(onnxruntime's ``InferenceSession.run`` is thread-safe). Execution providers follow the
platform: CUDA where onnxruntime has it, DirectML on Windows, CoreML on macOS, else CPU.
Production weights are never downloaded silently: a missing model file is a UserError that
says what to fetch and where.
"""
from __future__ import annotations

import io
import os
import sys
import threading
from dataclasses import dataclass

from pipeline.core.config import config_values, toml_defaults
from pipeline.core.errors import UserError

WHITE = (255, 255, 255)
# The rembg release that hosts the stock models (for the "fetch" message).
REMBG_RELEASE_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0"


def choose_providers(available: list[str] | None = None, platform: str | None = None) -> list[str]:
    """onnxruntime providers for this platform, best first, always ending with CPU."""
    if available is None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
    platform = platform or sys.platform
    wanted = ["CUDAExecutionProvider"]
    if platform == "win32":
        wanted.append("DmlExecutionProvider")
    if platform == "darwin":
        wanted.append("CoreMLExecutionProvider")
    chosen = [p for p in wanted if p in available]
    return chosen + ["CPUExecutionProvider"]


@dataclass(frozen=True)
@toml_defaults("models", model="models.bg_model", model_path="models.bg_model_path",
               providers="models.bg_providers", threads="models.bg_threads",
               jpeg_quality="worker.jpeg_quality")
class BgSettings:
    model: str          # a rembg model name; "u2net_custom" needs model_path
    model_path: str     # for u2net_custom: must lie under $U2NET_HOME
    providers: str      # "auto" or a comma-separated onnxruntime provider list
    threads: int        # onnxruntime intra-op threads; 0 = its default
    jpeg_quality: int

    def provider_list(self) -> list[str]:
        if self.providers == "auto":
            return choose_providers()
        return [p.strip() for p in self.providers.split(",") if p.strip()]


def check_model_present(settings: BgSettings) -> None:
    """Refuse to start when the stock model file is not on disk (rembg would download it)."""
    from rembg.sessions import sessions_class

    cls = next((sc for sc in sessions_class if sc.name() == settings.model), None)
    if cls is None:
        raise UserError(f"unknown background model {settings.model!r} (rembg has no session of that name)")
    if settings.model.endswith("_custom"):
        if not settings.model_path:
            raise UserError(f"background model {settings.model} needs models.bg_model_path")
        if not os.path.isfile(os.path.expanduser(settings.model_path)):
            raise UserError(f"background model file {settings.model_path} does not exist")
        return
    fname = f"{settings.model}.onnx"
    if stock_model_file(cls, fname) is None:
        raise UserError(f"weights missing for background model {settings.model}: fetch "
                        f"{REMBG_RELEASE_URL}/{fname} into {stock_model_dir(cls)} "
                        f"(or $U2NET_HOME)")


def stock_model_dir(cls) -> str:
    """Where rembg keeps a stock model: ``model_dir()`` (rembg 2.0.7x on), else the older
    flat ``$U2NET_HOME`` (``u2net_home()``)."""
    model_dir = getattr(cls, "model_dir", None)
    return model_dir() if model_dir else cls.u2net_home()


def stock_model_file(cls, fname: str) -> str | None:
    """The stock model file rembg will open, or None. Newer rembg opens an existing file as
    it is; older releases check its MD5 on every session and download again when it differs
    (doctor compares the MD5)."""
    resolve = getattr(cls, "resolve_existing", None)
    if resolve is not None:
        return resolve(fname)
    path = os.path.join(cls.u2net_home(), fname)
    return path if os.path.isfile(path) else None


_sessions: dict[tuple, object] = {}
_sessions_lock = threading.Lock()


def get_session(settings: BgSettings):
    """The process's rembg session for these settings, created once."""
    key = (settings.model, settings.model_path, settings.providers, settings.threads)
    with _sessions_lock:
        session = _sessions.get(key)
        if session is None:
            check_model_present(settings)
            import onnxruntime
            from rembg import new_session

            opts = onnxruntime.SessionOptions()
            if settings.threads > 0:
                opts.intra_op_num_threads = settings.threads
                opts.inter_op_num_threads = 1
            kwargs = {"providers": settings.provider_list(), "sess_opts": opts}
            if settings.model_path:
                kwargs["model_path"] = os.path.expanduser(settings.model_path)
            try:
                session = new_session(settings.model, **kwargs)
            except ValueError as exc:  # e.g. a custom model path outside $U2NET_HOME
                raise UserError(f"background model {settings.model}: {exc}") from None
            _sessions[key] = session
        return session


class BackgroundRemover:
    """Cut-out flattened onto white, as RGB."""

    def __init__(self, settings: BgSettings | None = None):
        self.settings = settings or BgSettings()

    @property
    def session(self):
        return get_session(self.settings)

    def remove(self, image):
        """A PIL image -> the same size, RGB, background replaced by white."""
        from PIL import Image

        rgb = image.convert("RGB")
        # rembg's session gives the alpha mask; compositing onto white is rembg's naive
        # cut-out followed by the flattening, in one step.
        mask = self.session.predict(rgb)[0]
        if mask.size != rgb.size:
            mask = mask.resize(rgb.size, Image.Resampling.LANCZOS)
        white = Image.new("RGB", rgb.size, WHITE)
        return Image.composite(rgb, white, mask)

    def to_jpeg(self, image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=self.settings.jpeg_quality)
        return buf.getvalue()

    def remove_to_jpeg(self, image) -> bytes:
        return self.to_jpeg(self.remove(image))


def settings_from_config(config, profile: str) -> BgSettings:
    """The ``models.bg_*`` settings; the test and random profiles use the tiny model
    (generated under $U2NET_HOME) unless a root names another background model."""
    model = config.get("models.bg_model")
    model_path = config.get("models.bg_model_path")
    if profile != "production" and model == "u2net" and not model_path:
        from pipeline.models.testprofile import ensure_tiny_u2net

        model, model_path = "u2net_custom", str(ensure_tiny_u2net())
    values = config_values(BgSettings, config)
    values.update(model=model, model_path=model_path)
    return BgSettings(**values)
