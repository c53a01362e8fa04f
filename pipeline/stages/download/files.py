"""Where a downloaded image's file lives: its final and temp names in images/imagedownload/, and
the sweep of temp files a killed run left behind."""
from __future__ import annotations

import os
from pathlib import Path

TEMP_SUFFIX = ".part"


def final_name(listing_id: int, image_id: int) -> str:
    return f"{listing_id}_{image_id}.jpg"


def temp_name(listing_id: int, image_id: int) -> str:
    # Hidden and with a suffix of its own, so nothing that lists *.jpg ever sees it.
    return f".{listing_id}_{image_id}.jpg{TEMP_SUFFIX}"


def remove_temp_files(download_dir: Path) -> int:
    """Remove temp files a killed run left behind (only this stage writes them)."""
    removed = 0
    try:
        entries = os.scandir(download_dir)
    except FileNotFoundError:
        return 0
    with entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed
