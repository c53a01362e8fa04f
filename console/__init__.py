"""The Textual operations console (UI only; data comes from pipeline.status.snapshot)."""
