"""The batch and result file formats shared by the orchestrator and the workers."""
