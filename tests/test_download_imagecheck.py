"""pipeline/core/imagecheck.py: the complete check accepts every real image kind and rejects
truncation wherever the cut falls, in the cheap draft mode as in a full decode."""
from __future__ import annotations

import pytest

import download_support as ds
from pipeline.core.imagecheck import ImageRejected, verify_image

LIMIT = 40_000_000


@pytest.mark.parametrize("make, fmt, mode, size", [
    (lambda: ds.jpeg_bytes(96, 64), "JPEG", "RGB", (96, 64)),
    (lambda: ds.jpeg_bytes(96, 64, progressive=True), "JPEG", "RGB", (96, 64)),
    (ds.cmyk_jpeg, "JPEG", "CMYK", (96, 64)),
    (ds.png16, "PNG", "I;16", (96, 64)),
    (ds.palette_png, "PNG", "P", (96, 64)),
    (ds.palette_gif, "GIF", "P", (96, 64)),
    (ds.exif_rotated_jpeg, "JPEG", "RGB", (80, 120)),  # stored 120x80, shown turned
])
@pytest.mark.parametrize("full", [False, True])
def test_accepts_real_images(make, fmt, mode, size, full):
    info = verify_image(make(), LIMIT, full_decode=full)
    assert (info.format, info.mode, (info.width, info.height)) == (fmt, mode, size)


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("full", [False, True])
def test_rejects_jpeg_truncated_anywhere(progressive, full):
    data = ds.jpeg_bytes(400, 300, seed=9, progressive=progressive)
    n = len(data)
    # From inside the headers to the very last byte (only the EOI marker missing).
    cuts = sorted({200, 700, n // 4, n // 2, (3 * n) // 4, n - 1000, n - 100, n - 10, n - 2, n - 1})
    for cut in cuts:
        with pytest.raises(ImageRejected) as err:
            verify_image(data[:cut], LIMIT, full_decode=full)
        assert "truncated" in err.value.reason or "not an image" in err.value.reason, (cut, err.value.reason)
    assert verify_image(data, LIMIT, full_decode=full).width == 400


def test_draft_decode_is_reduced_scale_but_complete():
    """Draft mode really decodes at 1/8 (that is its saving) and still needs every byte."""
    import io

    from PIL import Image

    data = ds.jpeg_bytes(800, 600, seed=3)
    image = Image.open(io.BytesIO(data))
    image.draft(None, (1, 1))
    image.load()
    assert image.size == (100, 75)
    with pytest.raises(ImageRejected, match="truncated"):
        verify_image(data[:-2], LIMIT)


@pytest.mark.parametrize("make", [ds.palette_png, ds.png16, ds.palette_gif, ds.cmyk_jpeg])
def test_rejects_other_formats_truncated(make):
    data = make()
    for cut in (len(data) // 2, len(data) - 50):
        with pytest.raises(ImageRejected):
            verify_image(data[:cut], LIMIT)


def test_rejects_bad_inputs():
    with pytest.raises(ImageRejected, match="empty body"):
        verify_image(b"", LIMIT)
    with pytest.raises(ImageRejected, match=r"not an image \(text/html\)"):
        verify_image(ds.html_page(), LIMIT, content_type="text/html")
    # Over Pillow's own limit: refused at open.
    with pytest.raises(ImageRejected, match="decompression bomb"):
        verify_image(ds.png_bomb(), LIMIT)
    # Under Pillow's limit but over ours: refused from the header, before decoding.
    with pytest.raises(ImageRejected, match="decompression bomb: 9000x9000"):
        verify_image(ds.jpeg_claiming_size(9000, 9000), LIMIT)
    assert verify_image(ds.jpeg_bytes(96, 64), 96 * 64).width == 96
    with pytest.raises(ImageRejected, match="decompression bomb"):
        verify_image(ds.jpeg_bytes(96, 64), 96 * 64 - 1)


def test_refuses_to_run_with_truncation_allowed(monkeypatch):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        verify_image(ds.jpeg_bytes(), LIMIT)


def test_formats_outside_the_allowlist_are_not_images():
    import io

    image = ds.noise_rgb(64, 64, 1)
    webp, ico = io.BytesIO(), io.BytesIO()
    image.save(webp, "WEBP")
    image.save(ico, "ICO")
    assert verify_image(webp.getvalue(), LIMIT).format == "WEBP"
    with pytest.raises(ImageRejected, match="not an image"):
        verify_image(ico.getvalue(), LIMIT)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n" + b"% padding\n" * 200
    with pytest.raises(ImageRejected, match="not an image"):
        verify_image(eps, LIMIT)
