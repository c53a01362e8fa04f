"""Ensemble search over the index."""
