"""A loaded model: per-image preprocessing and batched inference, whatever made it (the
production weights in pipeline/models/loading.py, or the random profiles in
pipeline/models/testprofile.py). torch is imported only when a model is used."""
from __future__ import annotations

from typing import Any, Callable

from pipeline.core.errors import UserError
from pipeline.models.registry import ModelSpec


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


def hf_preprocess(processor) -> Callable:
    """A Hugging Face image processor as a one-image function giving a (3, H, W) tensor."""
    def preprocess(image):
        return processor(images=image, return_tensors="pt")["pixel_values"][0]
    return preprocess
