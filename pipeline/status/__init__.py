"""The status snapshot that the CLI and every console panel read."""
