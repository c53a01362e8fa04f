"""The sandbox catalogue's pictures: a furniture-like shape on a background, drawn
deterministically per image at Etsy's sizes, and Etsy's tiny placeholder picture.
"""
from __future__ import annotations

import io
import random
from functools import lru_cache

from pipeline.sandbox.seeded import stable_rng

_SIZES = {"75x75": (75, 75), "170x135": (170, 135)}


@lru_cache(maxsize=1)
def placeholder_jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (75, 75), (221, 221, 221)).save(buf, "JPEG", quality=30)
    return buf.getvalue()


def _palette(rng: random.Random) -> tuple:
    wood = [(120, 72, 40), (164, 116, 73), (94, 60, 38), (196, 160, 110), (60, 40, 30)]
    paint = [(40, 60, 90), (150, 40, 40), (60, 110, 80), (220, 200, 170), (30, 30, 30), (200, 120, 60)]
    main = rng.choice(wood + paint)
    accent = rng.choice(wood + paint)
    return main, accent


def _seeded_noise(sigma: float, w: int, h: int):
    """Grey noise around 128 with spread sigma, the same bytes in every process: PIL's
    effect_noise draws from an unseeded generator, so two runs of one catalogue differed."""
    from PIL import Image

    noise_rng = random.Random(f"noise:{sigma!r}:{w}x{h}")
    raw = Image.frombytes("L", (w, h), noise_rng.randbytes(w * h))
    gain = sigma / 74.0  # uniform bytes have a standard deviation of about 74
    return raw.point(lambda v: max(0, min(255, round(128 + (v - 128) * gain)))).convert("RGB")


def _background(rng: random.Random, w: int, h: int):
    from PIL import Image, ImageDraw

    style = rng.choice(("solid", "gradient", "room", "noise", "stripes"))
    c1 = tuple(rng.randrange(150, 256) for _ in range(3))
    c2 = tuple(rng.randrange(60, 220) for _ in range(3))
    if style == "solid":
        return Image.new("RGB", (w, h), c1)
    if style == "gradient":
        mask = Image.linear_gradient("L").resize((w, h))
        return Image.composite(Image.new("RGB", (w, h), c2), Image.new("RGB", (w, h), c1), mask)
    if style == "room":
        img = Image.new("RGB", (w, h), c1)
        floor = int(h * rng.uniform(0.6, 0.8))
        ImageDraw.Draw(img).rectangle((0, floor, w, h), fill=c2)
        return img
    if style == "noise":
        return Image.blend(Image.new("RGB", (w, h), c1), _seeded_noise(rng.uniform(20, 60), w, h), 0.25)
    img = Image.new("RGB", (w, h), c1)
    draw = ImageDraw.Draw(img)
    step = max(4, int(w * rng.uniform(0.04, 0.12)))
    for x in range(0, w, step * 2):
        draw.rectangle((x, 0, x + step - 1, h), fill=c2)
    return img


def _draw_object(draw, shape: str, rng: random.Random, box: tuple[float, float, float, float]) -> None:
    """Draw one furniture-like object inside box (x0, y0, x1, y1), in pixels."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    main, accent = _palette(rng)
    leg = max(2, int(w * rng.uniform(0.03, 0.06)))

    def rect(a, b, c, d, fill):
        draw.rectangle((x0 + a * w, y0 + b * h, x0 + c * w, y0 + d * h), fill=fill)

    if shape == "chair":
        rect(0.2, 0.0, 0.3, 0.55, main)                      # back post
        rect(0.2, 0.05, 0.75, 0.3, accent)                   # back rest
        rect(0.2, 0.5, 0.8, 0.6, main)                       # seat
        for x in (0.22, 0.72):
            draw.rectangle((x0 + x * w, y0 + 0.6 * h, x0 + x * w + leg, y1), fill=main)
    elif shape == "sofa":
        rect(0.0, 0.35, 1.0, 0.85, main)
        rect(0.05, 0.15, 0.95, 0.45, accent)
        rect(0.0, 0.3, 0.12, 0.85, main)
        rect(0.88, 0.3, 1.0, 0.85, main)
        for x in (0.05, 0.9):
            draw.rectangle((x0 + x * w, y0 + 0.85 * h, x0 + x * w + leg, y1), fill=(40, 30, 20))
    elif shape == "cabinet":
        rect(0.1, 0.05, 0.9, 0.9, main)
        n = rng.randrange(2, 5)
        for j in range(n):
            top = 0.1 + j * 0.78 / n
            rect(0.15, top, 0.85, top + 0.78 / n - 0.03, accent)
            cx, cy = x0 + 0.5 * w, y0 + (top + 0.39 / n) * h
            draw.ellipse((cx - leg, cy - leg, cx + leg, cy + leg), fill=(200, 190, 150))
        for x in (0.12, 0.83):
            draw.rectangle((x0 + x * w, y0 + 0.9 * h, x0 + x * w + leg, y1), fill=main)
    elif shape == "bed":
        rect(0.0, 0.1, 0.12, 0.9, main)                      # headboard
        rect(0.05, 0.5, 1.0, 0.75, accent)                   # mattress
        rect(0.05, 0.72, 1.0, 0.85, main)                    # frame
        rect(0.12, 0.42, 0.35, 0.52, (240, 240, 240))        # pillow
    elif shape == "shelf":
        rect(0.15, 0.0, 0.2, 1.0, main)
        rect(0.8, 0.0, 0.85, 1.0, main)
        n = rng.randrange(3, 6)
        for j in range(n):
            y = (j + 1) / (n + 1)
            rect(0.15, y, 0.85, y + 0.03, main)
            for b in range(rng.randrange(1, 6)):
                bx = 0.22 + b * 0.1
                rect(bx, y - rng.uniform(0.08, 0.15), bx + 0.07, y, tuple(rng.randrange(256) for _ in range(3)))
    elif shape == "lamp":
        rect(0.35, 0.9, 0.65, 1.0, main)
        rect(0.48, 0.3, 0.52, 0.9, main)
        draw.polygon([(x0 + 0.3 * w, y0 + 0.3 * h), (x0 + 0.7 * w, y0 + 0.3 * h),
                      (x0 + 0.6 * w, y0), (x0 + 0.4 * w, y0)], fill=accent)
    elif shape == "stool":
        draw.ellipse((x0 + 0.1 * w, y0 + 0.3 * h, x0 + 0.9 * w, y0 + 0.5 * h), fill=accent)
        rect(0.1, 0.4, 0.9, 0.9, main)
        draw.ellipse((x0 + 0.1 * w, y0 + 0.8 * h, x0 + 0.9 * w, y0 + h), fill=main)
    elif shape == "desk":
        rect(0.0, 0.3, 1.0, 0.38, main)
        rect(0.65, 0.38, 0.95, 0.95, accent)
        rect(0.05, 0.38, 0.05 + leg / max(w, 1), 1.0, main)
    elif shape == "crib":
        rect(0.0, 0.2, 1.0, 0.26, main)
        rect(0.0, 0.8, 1.0, 0.86, main)
        for j in range(12):
            x = j / 11 * 0.96
            rect(x, 0.2, x + 0.03, 1.0, main)
        rect(0.05, 0.7, 0.95, 0.8, accent)
    elif shape == "bench":
        rect(0.0, 0.45, 1.0, 0.58, main)
        for x in (0.05, 0.9):
            draw.rectangle((x0 + x * w, y0 + 0.58 * h, x0 + x * w + 2 * leg, y1), fill=accent)
    else:  # table
        rect(0.0, 0.3, 1.0, 0.4, main)
        for x in (0.04, 0.9):
            draw.rectangle((x0 + x * w, y0 + 0.4 * h, x0 + x * w + 2 * leg, y1), fill=accent)


@lru_cache(maxsize=512)
def render_picture(seed: int, image_id: int, scene: tuple, size: str, full_w: int, full_h: int,
                   fmt: str) -> bytes:
    from PIL import Image, ImageDraw, ImageOps

    if size == "fullxfull":  # drawn at most 800 wide, then scaled up: big but cheap
        w, h = min(full_w, 800), max(1, round(min(full_w, 800) * full_h / full_w))
    elif size == "570xN":
        w, h = 570, max(1, round(570 * full_h / full_w))
    else:  # the small sizes are cropped from a picture of the full shape
        w, h = 400, max(1, round(400 * full_h / full_w))
    obj_seed, shape, view_seed = scene
    view = stable_rng("view", seed, view_seed)
    img = _background(view, w, h)
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    side = min(w, h)
    ow, oh = side * 0.62, side * 0.62
    _draw_object(ImageDraw.Draw(layer), shape, stable_rng("object", seed, obj_seed),
                 ((w - ow) / 2, (h - oh) / 2, (w + ow) / 2, (h + oh) / 2))
    # A slightly different camera: small rotation, shear, scale and shift.
    angle = view.uniform(-8, 8)
    layer = layer.rotate(angle, resample=Image.BICUBIC, center=(w / 2, h / 2))
    scale = view.uniform(0.88, 1.1)
    shear = view.uniform(-0.12, 0.12)
    dx, dy = view.uniform(-0.06, 0.06) * w, view.uniform(-0.04, 0.04) * h
    a, b = 1 / scale, shear / scale
    c = w / 2 - a * w / 2 - b * h / 2 - dx
    e = 1 / scale
    f = h / 2 - e * h / 2 - dy
    layer = layer.transform((w, h), Image.AFFINE, (a, b, c, 0, e, f), resample=Image.BILINEAR)
    img.paste(layer, (0, 0), layer)
    if size in _SIZES:
        img = ImageOps.fit(img, _SIZES[size], method=Image.BILINEAR)
    elif size == "fullxfull" and (w, h) != (full_w, full_h):
        img = img.resize((full_w, full_h), Image.BILINEAR)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, "JPEG", quality=88)
    return buf.getvalue()
