"""Re-embedding one model over the whole collection (`imageselector reembed MODEL`).

A shared package, not a stage: it is a command an operator runs (once per model upgrade),
not a process of the stage table, and it needs two things that live in stages (reading an
image from its tar, the listing text), which the CLI passes in as functions, as search is
given its image locator. run.py is the loop, job.py the state on disk, compute.py one model
over image bytes, ray_route.py the same on a Ray cluster. The commit point is the index
store's (pipeline/index/columns.py).
"""
