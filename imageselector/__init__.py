"""Entry point of the `imageselector` command (also `python -m imageselector`).

The pipeline lives in `pipeline/`, the SSH library in `remote/`, the UI in `console/`;
this package only wires the command line, so it is the one place that may import all three."""
