"""The registry as plain data with whether each model's weights are on this host, and the
`hf download` line for each that is not: what `imageselector models` prints and what
`doctor` asks each worker host (no model is loaded, torch is not imported)."""
from __future__ import annotations


def model_listing(root) -> dict:
    from pipeline.models.registry import (MODELS, VECTOR_DIMS, VECTOR_ORDER, ModelSettings,
                                          auto_unload_threshold_bytes, fetch_instructions,
                                          hf_cache_dir, weights_present)

    settings = ModelSettings.from_config(root.config)
    production = settings.profile == "production"
    rows = []
    for spec in MODELS:
        present = weights_present(spec, settings) if production else None
        rows.append({
            "name": spec.name, "library": spec.library, "arch": spec.arch,
            "source": spec.source, "dim": spec.dim, "text": spec.text,
            "text_name": spec.text_name, "gated": spec.gated, "preprocess": spec.preprocess,
            "weights_present": present,
            "fetch": None if present or not production else fetch_instructions(spec, settings),
        })
    return {"profile": settings.profile,
            "cache_dir": str(hf_cache_dir(settings)) if production else None,
            "models": rows,
            # "auto" unloads on a device with less memory than this (torch is not needed here)
            "unload_between_models": settings.unload_between_models,
            "auto_unload_below_bytes": auto_unload_threshold_bytes(MODELS),
            "vector_order": [{"name": n, "dim": VECTOR_DIMS[n]} for n in VECTOR_ORDER]}
