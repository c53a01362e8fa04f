"""Models without the internet: the same classes as production with random weights.

- profile ``test``: tiny configurations (one layer, 32 px images) that still give the
  registry's output dimensions, seeded per model so every process builds identical weights
  (the orchestrator may merge batches embedded by different workers).
- profile ``random``: the full-size architectures at random init, for benchmarks.
- ``ensure_tiny_u2net()``: a tiny ONNX background model for rembg's ``u2net_custom``,
  written under ``$U2NET_HOME`` (rembg refuses a model path outside that folder).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from pathlib import Path

from pipeline.models import openclip_config
from pipeline.models.loaded import LoadedModel, hf_preprocess
from pipeline.models.registry import ModelSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_IMAGE = 32
TINY_CLIP_PREFIX = "imageselector-tiny-"
TINY_U2NET_NAME = "imageselector-tiny-u2net.onnx"
U2NET_SIZE = 320  # rembg's u2net sessions feed 320x320


def _tiny_clip_config(embed_dim: int) -> dict:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": TINY_IMAGE, "layers": 1, "width": 64, "head_width": 32,
                       "patch_size": 8},
        # vocab_size stays the real tokenizer's: its ids go up to 49407.
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 1},
    }


def tiny_clip_config(spec: ModelSpec) -> dict:
    """The test profile's open_clip architecture of ``spec`` (tests write it as a cached
    repo's open_clip_config.json)."""
    return _tiny_clip_config(spec.dim)


def transformers_config(spec: ModelSpec, profile: str):
    """The transformers config and image processor of ``spec`` for a random profile."""
    import transformers

    if spec.arch == "Dinov2Model":
        return (transformers.Dinov2Config(**_transformers_config(spec, profile)),
                transformers.BitImageProcessor(**_processor_config(spec, profile)))
    return (transformers.DINOv3ViTConfig(**_transformers_config(spec, profile)),
            transformers.DINOv3ViTImageProcessor(**_processor_config(spec, profile)))


def _transformers_config(spec: ModelSpec, profile: str) -> dict:
    """Keyword arguments of the transformers config class for this spec and profile."""
    if spec.arch == "Dinov2Model":
        if profile == "test":
            return {"hidden_size": spec.dim, "num_hidden_layers": 1, "num_attention_heads": 4,
                    "mlp_ratio": 1, "image_size": TINY_IMAGE, "patch_size": 8}
        large = spec.dim == 1024
        return {"hidden_size": spec.dim, "num_hidden_layers": 24 if large else 12,
                "num_attention_heads": 16 if large else 12, "mlp_ratio": 4,
                "image_size": 518, "patch_size": 14, "layerscale_value": 1e-5}
    if spec.arch == "DINOv3ViTModel":
        if profile == "test":
            return {"hidden_size": spec.dim, "intermediate_size": spec.dim,
                    "num_hidden_layers": 1, "num_attention_heads": 4, "patch_size": 8,
                    "image_size": TINY_IMAGE, "num_register_tokens": 1}
        return {"hidden_size": spec.dim, "intermediate_size": 4 * spec.dim,
                "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 16,
                "image_size": 224, "num_register_tokens": 4, "layerscale_value": 1e-5,
                "key_bias": False}
    raise ValueError(f"no test configuration for {spec.arch}")


def _processor_config(spec: ModelSpec, profile: str) -> dict:
    tiny = profile == "test"
    if spec.arch == "Dinov2Model":
        return {"size": {"shortest_edge": TINY_IMAGE + 4 if tiny else 256},
                "crop_size": {"height": TINY_IMAGE if tiny else 224,
                              "width": TINY_IMAGE if tiny else 224},
                "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}
    side = TINY_IMAGE if tiny else 224
    return {"size": {"height": side, "width": side},
            "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD)}


def config_id(spec: ModelSpec, profile: str) -> str:
    """A short id of the random configuration (part of the result's fingerprint)."""
    if spec.library == "open_clip":
        cfg = _tiny_clip_config(spec.dim) if profile == "test" else {"arch": spec.arch}
    else:
        cfg = {"model": _transformers_config(spec, profile),
               "processor": _processor_config(spec, profile)}
    blob = json.dumps({"profile": profile, "cfg": cfg, "seed": _seed(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _seed(spec: ModelSpec) -> int:
    return zlib.crc32(spec.name.encode())


def build(spec: ModelSpec, profile: str, device: str, precision: str) -> LoadedModel:
    """A randomly initialised model of ``spec`` (profile ``test`` or ``random``), seeded."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(spec))
        if spec.library == "open_clip":
            model = _build_open_clip(spec, profile, device, precision)
        else:
            model = _build_transformers(spec, profile, device, precision)
    model.identity = {"profile": profile, "config": config_id(spec, profile)}
    return model


def _build_open_clip(spec: ModelSpec, profile: str, device: str, precision: str) -> LoadedModel:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    arch = spec.arch
    if profile == "test":
        arch = TINY_CLIP_PREFIX + spec.arch
        openclip_config.register(arch, _tiny_clip_config(spec.dim))
    # open_clip logs a root-logger warning for random init, which is the point here.
    logging.disable(logging.WARNING)
    try:
        module = open_clip.create_model(arch, pretrained=None, device=device, pretrained_text=False)
    finally:
        logging.disable(logging.NOTSET)
    preprocess = image_transform_v2(PreprocessCfg(**module.visual.preprocess_cfg),
                                              is_train=False)
    tokenizer = open_clip.get_tokenizer(arch)
    return LoadedModel(spec, module, preprocess, device, precision, tokenizer)


def _build_transformers(spec: ModelSpec, profile: str, device: str, precision: str) -> LoadedModel:
    import transformers

    config, processor = transformers_config(spec, profile)
    module = getattr(transformers, spec.arch)(config)
    module.to(device)
    return LoadedModel(spec, module, hf_preprocess(processor), device, precision)


# ---- the tiny background model -------------------------------------------------------

def u2net_home() -> Path:
    """Where rembg looks for custom models: $U2NET_HOME, else its legacy default ~/.u2net."""
    home = os.environ.get("U2NET_HOME")
    if home:
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME", "~")).expanduser() / ".u2net"


def tiny_u2net_bytes() -> bytes:
    """A one-conv ONNX model, 1x3x320x320 -> 1x1x320x320.

    Dark pixels score high (furniture on a light background), plus a small centred ramp so
    the output is never constant: rembg min-max normalises the mask, and a constant mask
    gives NaN. The mask therefore depends on the input, as the tests require.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((1, 3, 3, 3), dtype=np.float32)
    weight[0, :, 1, 1] = -2.0  # centre tap: minus the brightness
    bias = np.array([1.0], dtype=np.float32)
    yy, xx = np.mgrid[0:U2NET_SIZE, 0:U2NET_SIZE].astype(np.float32)
    c = (U2NET_SIZE - 1) / 2.0
    ramp = (1.0 - np.sqrt((yy - c) ** 2 + (xx - c) ** 2) / c) * 0.5
    ramp = ramp.reshape(1, 1, U2NET_SIZE, U2NET_SIZE).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["conv", "ramp"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes, "imageselector_tiny_u2net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, U2NET_SIZE, U2NET_SIZE])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, U2NET_SIZE, U2NET_SIZE])],
        initializer=[numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
                     numpy_helper.from_array(ramp, "ramp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="imageselector")
    model.ir_version = 8  # readable by older onnxruntime builds on the workers
    onnx.checker.check_model(model)
    return model.SerializeToString()


def ensure_tiny_u2net(home: Path | None = None) -> Path:
    """Write the tiny model under ``home`` (default: rembg's home) once; return its path."""
    home = Path(home) if home else u2net_home()
    path = home / TINY_U2NET_NAME
    data = tiny_u2net_bytes()
    if path.is_file() and path.read_bytes() == data:
        return path
    home.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path
