"""Adopting the original system's data in place (issue 10): its DB mapped into the new
schema, its index shards checked row by row and taken into the index store, its tars and
primary tars checked and linked, and a report of everything found, taken and refused.

    from pipeline.adopt import adopt
    report = adopt(root, "/path/to/original", dry_run=False)

The original is never written: its DB is opened read-only (SQLite URI mode=ro, immutable
when it has no write-ahead log), its files are read or hard-linked, never opened for
writing. See pipeline/adopt/run.py for the phases and how each one resumes.
"""
from __future__ import annotations


class Stopped(Exception):
    """A stop was asked for (SIGTERM, Ctrl-C): everything committed so far stays."""


def adopt(root, original, dry_run: bool = False, quick: bool = False, fingerprint: str | None = None,
          layout: tuple | None = None, stop=None, log=None):
    """Run one adoption (or a dry run) and return its Report."""
    from pipeline.adopt.run import Adoption

    return Adoption(root, original, dry_run=dry_run, quick=quick, fingerprint=fingerprint,
                    layout=layout, stop=stop, log=log).run()
