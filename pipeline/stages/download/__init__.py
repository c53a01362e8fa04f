"""The download stage: entry point, the downloader loop, one image's fetch, the worker pool."""
