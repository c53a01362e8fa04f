"""Loading the registry's models for one process: device choice, the ``ModelSet`` (each
model loaded on first use, once, from the profile: the production weights from the local
Hugging Face cache, or pipeline/models/testprofile.py's random ones) and the fingerprint of
which models and weights made a vector. torch, open_clip and transformers are imported
only when a model is loaded."""
from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from pipeline.core.errors import UserError
from pipeline.models import testprofile
from pipeline.models.loaded import LoadedModel, hf_preprocess
from pipeline.models.registry import (MODEL_NAMES, ModelSettings, ModelSpec, cached_weight_files,
                                      fetch_instructions, get_spec, hf_cache_dir, snapshot_revision,
                                      unload_decision, weights_present)


def import_model_libraries() -> None:
    """Import torch and the model libraries. A process that loads models and also reads
    faiss indexes calls this before faiss is imported: the other order has crashed the
    process on macOS (two OpenMP runtimes)."""
    import torch  # noqa: F401  (first: the OpenMP runtime faiss then shares)
    import open_clip  # noqa: F401
    import transformers  # noqa: F401


# ---- device -----------------------------------------------------------------------------

def choose_device(wanted: str = "auto") -> str:
    """cuda, then mps (with the CPU fallback for missing ops), then cpu."""
    import torch

    if wanted == "cpu":
        return "cpu"
    if wanted in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if wanted in ("auto", "mps") and mps is not None and mps.is_available():
        return "mps"
    if wanted != "auto":
        raise UserError(f"models.device = {wanted!r}, but no {wanted} device is available here")
    return "cpu"


def device_memory_bytes(device: str) -> int | None:
    """The memory the models share: the CUDA device's total memory, else the system's RAM
    (MPS is unified memory)."""
    if device == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # an exotic platform: "auto" then unloads, the safe side
        return None


class ModelSet:
    """The registry's models for one process: each loaded on first use, once."""

    def __init__(self, settings: ModelSettings | None = None, names: tuple[str, ...] | None = None):
        self.settings = settings or ModelSettings.from_env()
        self.names = tuple(names or MODEL_NAMES)
        for name in self.names:
            get_spec(name)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._device: str | None = None
        self._unload: tuple[bool, str] | None = None

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = choose_device(self.settings.device)
            if self.settings.torch_threads > 0:
                import torch

                torch.set_num_threads(self.settings.torch_threads)
        return self._device

    def unload_decision(self) -> tuple[bool, str]:
        """Whether to free each model before the next (``models.unload_between_models``;
        "auto" follows the device's memory), and why, in one line."""
        if self._unload is None:
            choice = self.settings.unload_between_models
            memory = device_memory_bytes(self.device) if choice == "auto" else None
            self._unload = unload_decision(choice, memory, self.specs())
        return self._unload

    @property
    def unload_between_models(self) -> bool:
        return self.unload_decision()[0]

    def specs(self) -> list[ModelSpec]:
        return [get_spec(n) for n in self.names]

    def check_weights(self) -> None:
        """Production: fail before any work when a model's weights are not cached."""
        if self.settings.profile != "production":
            return
        for spec in self.specs():
            if not weights_present(spec, self.settings):
                raise UserError(fetch_instructions(spec, self.settings))

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._loaded.get(name)
            if model is None:
                model = self._load(get_spec(name))
                self._loaded[name] = model
            return model

    def loaded_names(self) -> list[str]:
        return list(self._loaded)

    def unload(self, name: str) -> None:
        """Free a model (small GPUs: one model at a time)."""
        with self._lock:
            model = self._loaded.pop(name, None)
        if model is None:
            return
        del model
        import gc

        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        elif self.device == "mps":
            import torch

            torch.mps.empty_cache()

    def unload_all(self) -> None:
        for name in list(self._loaded):
            self.unload(name)

    def _load(self, spec: ModelSpec) -> LoadedModel:
        profile = self.settings.profile
        if profile == "production":
            model = _load_pretrained(spec, self.settings, self.device)
        else:
            model = testprofile.build(spec, profile, self.device, self.settings.precision)
        model.module.eval()
        return model

    # ---- fingerprint: which models and weights made a vector ------------------------
    def fingerprint_detail(self) -> dict:
        detail: dict[str, Any] = {"profile": self.settings.profile,
                                  "precision": self.settings.precision, "models": {}}
        for spec in self.specs():
            entry: dict[str, Any] = {"library": spec.library, "arch": spec.arch,
                                     "source": spec.source, "dim": spec.dim}
            if self.settings.profile == "production":
                files = cached_weight_files(spec, self.settings)
                if files is None:
                    raise UserError(fetch_instructions(spec, self.settings))
                entry["revision"] = sorted({snapshot_revision(p) for p in files.values()})
            else:
                entry["config"] = testprofile.config_id(spec, self.settings.profile)
            detail["models"][spec.name] = entry
        return detail

    def fingerprint(self) -> str:
        return fingerprint_of(self.fingerprint_detail())


def fingerprint_of(detail: dict) -> str:
    blob = json.dumps(detail, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---- production loading -----------------------------------------------------------------

def _load_pretrained(spec: ModelSpec, settings: ModelSettings, device: str) -> LoadedModel:
    files = cached_weight_files(spec, settings)
    if files is None:
        raise UserError(fetch_instructions(spec, settings))
    revision = sorted({snapshot_revision(p) for p in files.values()})
    identity = {"source": spec.source, "revision": revision}
    if spec.library == "open_clip":
        return _load_open_clip(spec, settings, device, files, identity)
    import transformers

    cls = getattr(transformers, spec.arch)
    cache = str(hf_cache_dir(settings))
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            spec.hf_repo, cache_dir=cache, local_files_only=True)
        module = cls.from_pretrained(spec.hf_repo, cache_dir=cache, local_files_only=True)
    except OSError:
        raise UserError(fetch_instructions(spec, settings)) from None
    module.to(device)
    return LoadedModel(spec, module, hf_preprocess(processor), device, settings.precision,
                       None, identity)


def _load_open_clip(spec: ModelSpec, settings: ModelSettings, device: str, files: dict,
                    identity: dict) -> LoadedModel:
    """The architecture from the cached repo's open_clip_config.json, the weights from the
    same snapshot, and the pretrained tag's preprocessing (ViT-L-14 laion2b uses mean/std
    0.5, which a file path alone would lose)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from pipeline.models import openclip_config

    arch = openclip_config.register_cached(spec.name, files["open_clip_config.json"])
    tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.source) or {}
    force = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    weights = files[spec.weight_files[1][0]]
    try:
        module = open_clip.create_model(arch, pretrained=weights, device=device,
                                        force_preprocess_cfg=force, pretrained_text=False,
                                        require_pretrained=True)
    except RuntimeError as exc:  # weights that do not fit the cached config
        raise UserError(f"{spec.name}: {weights} does not load into the architecture of "
                        f"{files['open_clip_config.json']}: {str(exc)[:300]}") from None
    preprocess = image_transform_v2(PreprocessCfg(**module.visual.preprocess_cfg), is_train=False)
    tokenizer = open_clip.get_tokenizer(arch)
    return LoadedModel(spec, module, preprocess, device, settings.precision, tokenizer, identity)
