"""Verification of one downloaded image: is it a complete, decodable, sane-sized image?

The check decodes every byte of the image. For JPEG it uses Pillow's draft mode (libjpeg's
reduced-scale DCT, 1/8): the entropy-coded data is still read and decoded to the end, so a
truncated file fails exactly as with a full decode, at about two thirds of the cost (the
tests prove both). Other formats are decoded in full. Pillow's decompression-bomb limit is
left on, and a tighter configurable pixel limit is applied from the header before decoding.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageFile

# EXIF orientations 5-8 turn the picture by 90 degrees: a viewer shows it with w and h swapped.
_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


# Formats a product photo comes in. Anything else (EPS would start Ghostscript, PDF, ICO...)
# is "not an image" for this pipeline. Pillow's JPEG opener also yields MPO (a JPEG with
# extra frames, from cameras).
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
_JPEG_FORMATS = ("JPEG", "MPO")


class ImageRejected(Exception):
    """The bytes are not an acceptable image; ``reason`` is the short text stored in the DB."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str
    width: int          # as displayed (EXIF orientation applied)
    height: int
    stored_width: int   # as stored in the file
    stored_height: int


def verify_image(data: bytes, max_pixels: int, full_decode: bool = False,
                 content_type: str | None = None) -> ImageInfo:
    """Decode ``data`` completely; raise ImageRejected (not an image, truncated, bomb)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone turned Pillow's guard off: refuse to run blind
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; truncation would pass")
    what = f" ({content_type})" if content_type else ""
    if not data:
        raise ImageRejected("empty body (0 bytes)")
    # Pillow's own limit stays on (it refuses twice MAX_IMAGE_PIXELS at open); ours is never
    # looser than Pillow's warning threshold. (warnings.catch_warnings is not thread-safe.)
    if Image.MAX_IMAGE_PIXELS:
        max_pixels = min(max_pixels, int(Image.MAX_IMAGE_PIXELS))
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"decompression bomb: {exc}") from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(f"not an image{what}: unknown format, starts {data[:16]!r}") from None
    except Exception as exc:  # SyntaxError, struct errors... from a broken header
        raise ImageRejected(f"not an image{what}: {_short(exc)}") from None
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageRejected(f"not an image{what}: size {width}x{height}")
        if width * height > max_pixels:
            raise ImageRejected(f"decompression bomb: {width}x{height} pixels is over the "
                                f"limit of {max_pixels:,}")
        fmt, mode = image.format or "?", image.mode
        orientation = _orientation(image)
        if fmt in _JPEG_FORMATS and not full_decode:
            image.draft(None, (1, 1))  # the smallest DCT scale; every byte is still decoded
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise ImageRejected(f"decompression bomb: {exc}") from None
        except OSError as exc:
            text = str(exc)
            if "truncated" in text.lower() or "premature" in text.lower():
                raise ImageRejected(f"truncated image: {_short(exc)}") from None
            raise ImageRejected(f"broken image ({fmt}): {_short(exc)}") from None
        except Exception as exc:
            raise ImageRejected(f"broken image ({fmt}): {_short(exc)}") from None
    finally:
        image.close()
    shown_w, shown_h = (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)
    return ImageInfo(fmt, mode, shown_w, shown_h, width, height)


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block does not make the picture unusable
        return 1


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
