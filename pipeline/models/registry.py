"""The five image models (and the two CLIP text towers): registry, device choice, lazy loading.

The registry part (``MODELS``, ``VECTOR_ORDER``, ``VECTOR_DIMS``) imports nothing heavy, so
the CLI, the index store and status can use it freely. torch, open_clip and transformers are
imported only when a model is loaded.

Profiles (config ``models.profile`` or ``$IMAGESELECTOR_MODELS_PROFILE``):
- ``production``: the real pretrained weights, from the local Hugging Face cache only; a
  missing file is a UserError that says what to fetch and where (never a silent download).
- ``test``: the same classes with tiny random configurations (pipeline/models/testprofile.py), seeded,
  so every process gets the same vectors; runs on 2 CPU cores with no network.
- ``random``: the full-size architectures at random init (benchmarks: same compute as the
  real weights, no download).
Every profile gives the registry's dimensions, so nothing else depends on the profile.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.core.config import config_values, toml_defaults
from pipeline.core.errors import UserError

# Some DINO ops are missing on MPS; the fallback must be in the environment before torch
# initialises MPS, so it is set when this module is imported (cheap, no torch import).
if sys.platform == "darwin":
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

PROFILES = ("production", "test", "random")
PROFILE_ENV = "IMAGESELECTOR_MODELS_PROFILE"
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class ModelSpec:
    """One image model of the ensemble."""

    name: str
    library: str          # "open_clip" or "transformers"
    arch: str             # open_clip architecture, or the transformers model class
    source: str           # open_clip pretrained tag, or the Hugging Face repo id
    hf_repo: str          # the Hugging Face repo that holds the weights
    weight_files: tuple[tuple[str, ...], ...]  # each group: any one of these files must be cached
    dim: int
    text: bool            # has a text tower (CLIP)
    gated: bool           # the repo needs an accepted licence and a token
    preprocess: str       # what the model's preprocessing does, for the listing

    @property
    def text_name(self) -> str | None:
        return f"{self.name}_text" if self.text else None


_OPEN_CLIP_WEIGHTS = (("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),)
_HF_WEIGHTS = (("config.json",), ("preprocessor_config.json",),
               ("model.safetensors", "pytorch_model.bin"))

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("clip_vitb32", "open_clip", "ViT-B-32", "laion2b_s34b_b79k",
              "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", _OPEN_CLIP_WEIGHTS, 512, True, False,
              "open_clip: resize 224 bicubic, centre crop, CLIP mean/std"),
    ModelSpec("clip_vitl14", "open_clip", "ViT-L-14", "laion2b_s32b_b82k",
              "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", _OPEN_CLIP_WEIGHTS, 768, True, False,
              "open_clip: resize 224 bicubic, centre crop, mean/std 0.5"),
    ModelSpec("dinov2_base", "transformers", "Dinov2Model", "facebook/dinov2-base",
              "facebook/dinov2-base", _HF_WEIGHTS, 768, False, False,
              "image processor: resize 256, centre crop 224, ImageNet mean/std"),
    ModelSpec("dinov2_large", "transformers", "Dinov2Model", "facebook/dinov2-large",
              "facebook/dinov2-large", _HF_WEIGHTS, 1024, False, False,
              "image processor: resize 256, centre crop 224, ImageNet mean/std"),
    ModelSpec("dinov3_base", "transformers", "DINOv3ViTModel",
              "facebook/dinov3-vitb16-pretrain-lvd1689m",
              "facebook/dinov3-vitb16-pretrain-lvd1689m", _HF_WEIGHTS, 768, False, True,
              "image processor: resize 224x224, ImageNet mean/std"),
)
MODEL_NAMES: tuple[str, ...] = tuple(m.name for m in MODELS)
_BY_NAME = {m.name: m for m in MODELS}

# The seven vector files of a result and of a shard, in the index store's order
# (image_index.json's hashes follow it too).
VECTOR_ORDER: tuple[str, ...] = (
    "clip_vitb32", "clip_vitb32_text", "clip_vitl14", "clip_vitl14_text",
    "dinov2_base", "dinov2_large", "dinov3_base",
)
VECTOR_DIMS: dict[str, int] = {}
for _m in MODELS:
    VECTOR_DIMS[_m.name] = _m.dim
    if _m.text:
        VECTOR_DIMS[_m.text_name] = _m.dim
assert set(VECTOR_DIMS) == set(VECTOR_ORDER)


def get_spec(name: str) -> ModelSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise UserError(f"unknown model {name!r} (models: {', '.join(MODEL_NAMES)})") from None


def vector_source(vector_name: str) -> tuple[ModelSpec, bool]:
    """The model behind a vector file name and whether it is the text tower."""
    if vector_name.endswith("_text"):
        spec = get_spec(vector_name[: -len("_text")])
        if spec.text:
            return spec, True
    return get_spec(vector_name), False


# ---- settings ---------------------------------------------------------------------------

@dataclass(frozen=True)
@toml_defaults("models")
class ModelSettings:
    profile: str
    device: str
    precision: str
    unload_between_models: bool
    hf_cache_dir: str   # "" = the Hugging Face default ($HF_HUB_CACHE, ~/.cache/...)
    hf_token_file: str   # only named in the "fetch" instructions; never read here
    torch_threads: int   # 0 = torch's default

    def __post_init__(self):
        if self.profile not in PROFILES:
            raise UserError(f"models.profile must be one of {', '.join(PROFILES)}, got {self.profile!r}")
        if self.precision not in PRECISIONS:
            raise UserError(f"models.precision must be one of {', '.join(PRECISIONS)}, "
                            f"got {self.precision!r}")
        if self.device not in DEVICES:
            raise UserError(f"models.device must be one of {', '.join(DEVICES)}, got {self.device!r}")

    @classmethod
    def from_config(cls, config, root_profile: str | None = None) -> "ModelSettings":
        """Read the ``models`` section; a production root refuses the test-profile models."""
        settings = cls(**config_values(cls, config))
        if root_profile == "production" and settings.profile != "production":
            raise UserError(f"this is a production root: models.profile must be production, "
                            f"not {settings.profile!r} (set by ${PROFILE_ENV} or imageselector.toml)")
        return settings

    @classmethod
    def from_env(cls, **overrides) -> "ModelSettings":
        """Without a root (benchmarks, tests): the profile from ``$IMAGESELECTOR_MODELS_PROFILE``."""
        values = {"profile": os.environ.get(PROFILE_ENV, "production")}
        values.update(overrides)
        return cls(**values)


def hf_cache_dir(settings: ModelSettings) -> Path:
    if settings.hf_cache_dir:
        return Path(settings.hf_cache_dir).expanduser()
    from huggingface_hub import constants  # light; only for the path

    return Path(constants.HF_HUB_CACHE)


# ---- weights on disk --------------------------------------------------------------------

def cached_weight_files(spec: ModelSpec, settings: ModelSettings) -> dict[str, str] | None:
    """The cached files of a model (one per group), or None when any group is missing."""
    from huggingface_hub import try_to_load_from_cache

    found: dict[str, str] = {}
    for group in spec.weight_files:
        for filename in group:
            path = try_to_load_from_cache(spec.hf_repo, filename, cache_dir=str(hf_cache_dir(settings)))
            if isinstance(path, str) and os.path.isfile(path):
                found[group[0]] = path
                break
        else:
            return None
    return found


def weights_present(spec: ModelSpec, settings: ModelSettings) -> bool:
    return cached_weight_files(spec, settings) is not None


def fetch_instructions(spec: ModelSpec, settings: ModelSettings) -> str:
    """One line: exactly what to fetch, and where, for a model whose weights are missing."""
    cache = hf_cache_dir(settings)
    files = " ".join(group[0] for group in spec.weight_files)
    token = ""
    if spec.gated:
        token_src = (f"$(cat {settings.hf_token_file})" if settings.hf_token_file
                     else "<your token>")
        token = (f"gated: accept the licence at https://huggingface.co/{spec.hf_repo}, then "
                 f"HF_TOKEN={token_src} ")
    return (f"weights missing for {spec.name}: fetch {spec.hf_repo} ({files}) into {cache}: "
            f"{token}hf download {spec.hf_repo} {files} --cache-dir {cache}")


def snapshot_revision(path: str) -> str:
    """The commit folder of a cached Hugging Face file (``.../snapshots/<rev>/file``)."""
    parts = Path(path).parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return "local"


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


# ---- loaded models ----------------------------------------------------------------------

class LoadedModel:
    """One loaded model: per-image preprocessing (thread-safe, CPU) and batched inference."""

    def __init__(self, spec: ModelSpec, module, preprocess: Callable, device: str,
                 precision: str, tokenizer=None, identity: dict | None = None):
        self.spec = spec
        self.module = module
        self._preprocess = preprocess
        self.device = device
        self.precision = precision
        self.tokenizer = tokenizer
        self.identity = identity or {}

    def preprocess(self, image) -> Any:
        """A PIL RGB image -> a (3, H, W) float tensor on the CPU."""
        return self._preprocess(image)

    def _autocast(self):
        import contextlib

        import torch

        if self.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device, dtype=torch.bfloat16)

    def embed_pixels(self, pixels) -> "Any":
        """A (N, 3, H, W) tensor -> (N, dim) float32 numpy, L2-normalised."""
        import torch

        with torch.inference_mode(), self._autocast():
            pixels = pixels.to(self.device)
            if self.spec.library == "open_clip":
                out = self.module.encode_image(pixels)
            else:
                result = self.module(pixel_values=pixels)
                out = getattr(result, "pooler_output", None)
                if out is None:  # no pooler: the CLS token
                    out = result.last_hidden_state[:, 0]
        return _normalise(out)

    def embed_images(self, images: list) -> "Any":
        import torch

        return self.embed_pixels(torch.stack([self.preprocess(im) for im in images]))

    def embed_texts(self, texts: list[str]) -> "Any":
        """CLIP text tower: (N, dim) float32 numpy, L2-normalised, same space as the images."""
        import torch

        if not self.spec.text:
            raise UserError(f"{self.spec.name} has no text tower")
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = self.module.encode_text(tokens)
        return _normalise(out)


def _normalise(out):
    import torch

    out = out.float()
    out = torch.nn.functional.normalize(out, dim=-1)
    return out.cpu().numpy().astype("float32", copy=False)


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

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = choose_device(self.settings.device)
            if self.settings.torch_threads > 0:
                import torch

                torch.set_num_threads(self.settings.torch_threads)
        return self._device

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
            from pipeline.models import testprofile as testmodels

            model = testmodels.build(spec, profile, self.device, self.settings.precision)
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
                from pipeline.models import testprofile as testmodels

                entry["config"] = testmodels.config_id(spec, self.settings.profile)
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
        import open_clip
        from open_clip.transform import PreprocessCfg, image_transform_v2

        weights = files[spec.weight_files[0][0]]
        # The tag's own mean/std (ViT-L-14 laion2b uses 0.5): a file path alone would lose them.
        tag_cfg = open_clip.get_pretrained_cfg(spec.arch, spec.source) or {}
        force = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        module = open_clip.create_model(spec.arch, pretrained=weights, device=device,
                                        force_preprocess_cfg=force, pretrained_text=False,
                                        require_pretrained=True)
        preprocess = image_transform_v2(PreprocessCfg(**module.visual.preprocess_cfg),
                                                  is_train=False)
        tokenizer = open_clip.get_tokenizer(spec.arch)
        return LoadedModel(spec, module, preprocess, device, settings.precision, tokenizer, identity)
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


def hf_preprocess(processor) -> Callable:
    """A Hugging Face image processor as a one-image function giving a (3, H, W) tensor."""
    def preprocess(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]
    return preprocess
