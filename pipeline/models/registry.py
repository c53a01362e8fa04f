"""The five image models (and the two CLIP text towers): the registry, the ``models``
settings, and where the weights live in the Hugging Face cache.

It imports nothing heavy, so the CLI, the index store and status can use it freely.
Loading a model (device choice, the pretrained weights, the profiles) is
pipeline/models/loading.py (open_clip's architecture from the cached repo's
open_clip_config.json: pipeline/models/openclip_config.py); torch, open_clip and transformers
are imported only there, and only when a model is loaded.

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

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.config import choice_of, config_values, toml_defaults
from pipeline.core.errors import UserError

# Some DINO ops are missing on MPS; the fallback must be in the environment before torch
# initialises MPS, so it is set when this module is imported (cheap, no torch import).
if sys.platform == "darwin":
    os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")

PROFILES = ("production", "test", "random")
PROFILE_ENV = "IMAGESELECTOR_MODELS_PROFILE"
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cuda", "mps", "cpu")
UNLOAD_KEY = "models.unload_between_models"      # its words: config.CHOICES
# "auto" unloads when the device's memory is below this many times the weights of the
# models the process loads: the weights, the activations of a batch of 32, the allocator's
# slack and the background model must fit, and on MPS/CPU the memory is the system's,
# shared with the OS and the rest of the pipeline.
AUTO_UNLOAD_FACTOR = 2.0


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
    weight_mb: int        # the fp32 weights file (MB): sizes models.unload_between_models = "auto"

    @property
    def text_name(self) -> str | None:
        return f"{self.name}_text" if self.text else None


# What `hf download` puts in the cache for the pretrained tags: open_clip's pretrained config
# names the repo with a trailing slash (the default file, safetensors preferred), and the
# repo's open_clip_config.json gives the architecture (production reads it from the cache).
_OPEN_CLIP_WEIGHTS = (("open_clip_config.json",),
                      ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
_HF_WEIGHTS = (("config.json",), ("preprocessor_config.json",),
               ("model.safetensors", "pytorch_model.bin"))

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec("clip_vitb32", "open_clip", "ViT-B-32", "laion2b_s34b_b79k",
              "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", _OPEN_CLIP_WEIGHTS, 512, True, False,
              "open_clip: resize 224 bicubic, centre crop, CLIP mean/std", 605),
    ModelSpec("clip_vitl14", "open_clip", "ViT-L-14", "laion2b_s32b_b82k",
              "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", _OPEN_CLIP_WEIGHTS, 768, True, False,
              "open_clip: resize 224 bicubic, centre crop, mean/std 0.5", 1711),
    ModelSpec("dinov2_base", "transformers", "Dinov2Model", "facebook/dinov2-base",
              "facebook/dinov2-base", _HF_WEIGHTS, 768, False, False,
              "image processor: resize 256, centre crop 224, ImageNet mean/std", 346),
    ModelSpec("dinov2_large", "transformers", "Dinov2Model", "facebook/dinov2-large",
              "facebook/dinov2-large", _HF_WEIGHTS, 1024, False, False,
              "image processor: resize 256, centre crop 224, ImageNet mean/std", 1218),
    ModelSpec("dinov3_base", "transformers", "DINOv3ViTModel",
              "facebook/dinov3-vitb16-pretrain-lvd1689m",
              "facebook/dinov3-vitb16-pretrain-lvd1689m", _HF_WEIGHTS, 768, False, True,
              "image processor: resize 224x224, ImageNet mean/std", 343),
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
    unload_between_models: str   # "auto" (by the device's memory), "always" or "never"
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
        object.__setattr__(self, "unload_between_models", _unload_choice(self.unload_between_models))

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


def _unload_choice(value) -> str:
    """``models.unload_between_models``: "auto", "always" or "never" (a bool, or true/false
    from the environment, means always/never)."""
    return choice_of(value, UNLOAD_KEY)


def auto_unload_threshold_bytes(specs=MODELS) -> int:
    """Below this much device memory, ``unload_between_models = "auto"`` loads one model at a
    time: AUTO_UNLOAD_FACTOR times the weights of ``specs`` (all five: about 8.4 GB)."""
    return int(AUTO_UNLOAD_FACTOR * sum(s.weight_mb for s in specs) * 1_000_000)


def unload_decision(choice: str, memory_bytes: int | None, specs=MODELS) -> tuple[bool, str]:
    """Whether to free each model before the next, and why (one line, for logs and doctor)."""
    if choice != "auto":
        return choice == "always", f"unload_between_models = {choice!r}"
    threshold = auto_unload_threshold_bytes(specs)
    if memory_bytes is None:
        return True, "device memory unknown: one model at a time"
    small = memory_bytes < threshold
    return small, (f"device memory {memory_bytes / 1e9:.1f} GB "
                   f"{'<' if small else '>='} {threshold / 1e9:.1f} GB "
                   f"({AUTO_UNLOAD_FACTOR:g} x the models' weights): "
                   f"{'one model at a time' if small else 'all models stay loaded'}")


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
