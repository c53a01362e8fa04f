"""Stage entry points. Each module here exposes ``run(ctx: pipeline.core.stage_runtime.StageContext) -> int``
and optionally ``add_arguments(parser)`` for stage-specific flags. Modules keep heavy
imports (torch, faiss, ...) inside ``run`` so that the CLI's help and status stay light."""
