"""One model over archived images: the compute of a re-embed, the same in this process and in
a Ray actor. The tars hold the worker's background-removed JPEGs, and the worker's models
see exactly those pixels (pipeline/models/embed.py), so no background removal runs here:
decode, the model's preprocessing, batched inference; the CLIP text tower over the listing
texts. torch is imported only when the model loads."""
from __future__ import annotations

from pipeline.core.errors import UserError


def vector_names(model: str) -> list[str]:
    """The vector files a model fills: its image vectors, and its text tower's if any."""
    from pipeline.models.registry import get_spec

    spec = get_spec(model)
    return [spec.name] + ([spec.text_name] if spec.text else [])


class ColumnEmbedder:
    """``model`` loaded once; ``embed`` gives every vector of that model for some images."""

    def __init__(self, settings, model: str, batch_size: int = 0):
        from pipeline.models.loading import ModelSet

        self.settings = settings
        self.model = model
        self.vectors = vector_names(model)
        self.models = ModelSet(settings, names=(model,))
        self.models.check_weights()
        self.batch_size = batch_size
        self.images = 0

    def fingerprint(self) -> str:
        """The fingerprint of every model under these settings: what the workers stamp on a
        batch once they run the new weights, and what the store holds after the switch."""
        from pipeline.models.loading import ModelSet

        return ModelSet(self.settings).fingerprint()

    def embed(self, images: list[bytes], texts: list[str] | None, labels: list[str]) -> dict:
        """{vector name: (n, dim) float32}; ``labels`` name the images in errors."""
        import numpy as np
        import torch

        from pipeline.models.embed import decode_image

        loaded = self.models.get(self.model)
        size = self.batch_size or (8 if self.models.device == "cpu" else 32)
        out = []
        for lo in range(0, len(images), size):
            pixels = []
            for data, label in zip(images[lo:lo + size], labels[lo:lo + size]):
                try:
                    pixels.append(loaded.preprocess(decode_image(data)))
                except ValueError as exc:
                    raise UserError(f"image {label}: {exc} (it is in the index, so it was "
                                    f"readable when embedded: check its tar)") from None
            out.append(loaded.embed_pixels(torch.stack(pixels)))
        result = {self.model: np.concatenate(out) if out else
                  np.zeros((0, loaded.spec.dim), dtype=np.float32)}
        if loaded.spec.text:
            if texts is None or len(texts) != len(images):
                raise UserError(f"{self.model}: the listing texts are needed for its text tower")
            unique = sorted(set(texts))
            by_text = {}
            for lo in range(0, len(unique), 64):
                chunk = unique[lo:lo + 64]
                by_text.update(zip(chunk, loaded.embed_texts(chunk)))
            result[loaded.spec.text_name] = (np.stack([by_text[t] for t in texts]) if texts
                                             else np.zeros((0, loaded.spec.dim), dtype=np.float32))
        self.images += len(images)
        return result
