"""The imageselector pipeline: stages, state database, index store, search, locks, backups.

Never imports Textual (tests/test_import_hygiene.py proves it)."""
