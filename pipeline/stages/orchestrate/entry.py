"""The ``orchestrate`` stage (kill file KILL_ORCH, pause PAUSE_ORCH): batches of downloaded
images to the workers of hosts.toml, their results into the index store. The logic is in
pipeline/stages/orchestrate/; this module wraps it in the stage contract.

``--once``: send what is queued now (a last partial batch included), wait for every result,
then exit (1 when images are left because no worker can take them). The runner's drain calls
``on_driver_finished`` so the last partial batch goes out too.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per batch (default: orchestrate.batch_size)")
    parser.add_argument("--flush", action="store_true",
                        help="send a last partial batch once the queue stops growing")


def on_driver_finished(root) -> None:
    """The crawl has ended: ask the running orchestrator for the last partial batch."""
    from pipeline.stages.orchestrate.files import request_flush

    request_flush(root)


def run(ctx) -> int:
    from pipeline.stages.orchestrate.core import Orchestrator
    from pipeline.stages.orchestrate.files import request_flush
    from pipeline.stages.orchestrate.settings import OrchestrateSettings

    overrides = {}
    if getattr(ctx.args, "batch_size", None):
        overrides["batch_size"] = int(ctx.args.batch_size)
    settings = OrchestrateSettings.from_config(ctx.config, **overrides)
    if getattr(ctx.args, "flush", False):
        request_flush(ctx.root)
    from pipeline.core.diskfloor import DiskFloor
    from pipeline.stages.orchestrate.files import spool_dir

    # the batch and result spool (run/orchestrate) and where an import writes
    floor = DiskFloor(ctx.root, [spool_dir(ctx.root), ctx.root.bgremoved_dir, ctx.root.embeddings_dir],
                      stage="orchestrate", conn=ctx.db, log=ctx.log)
    orch = Orchestrator(ctx.root, ctx.db(), settings, log=ctx.log, once=ctx.once,
                        checkpoint=ctx.checkpoint, report=ctx, floor=floor)
    code = orch.run()
    if orch.failure:
        ctx.set_info(failure=orch.failure)
    ctx.log.info("orchestrate: %s", ", ".join(f"{k} {v}" for k, v in orch.totals.items()))
    return code
