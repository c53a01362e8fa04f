"""The download stage: entry point, the downloader."""
