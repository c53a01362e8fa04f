"""The pipeline stage: the weekly run that drives every other stage."""
