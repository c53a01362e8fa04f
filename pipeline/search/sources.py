"""Where query pictures come from besides files (issue 19): an image URL, fetched with the
downloader's rules (pipeline/core/httpfetch.py: redirect cap, timeouts, size limit, length
check; then pipeline/core/imagecheck.py: full decode, bomb limit), and a listing that is not
indexed, whose images come through the Etsy API client (its rate and daily quota)."""
from __future__ import annotations

import io
from dataclasses import dataclass

from pipeline.core.errors import UserError

# A body of these types is a page or an API answer, not a picture (a clearer error than
# "unknown format").
_NOT_IMAGE = ("text/", "application/json", "application/xml", "application/xhtml")


@dataclass
class UrlLimits:
    """The download stage's limits, read from the ``[download]`` config section."""
    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float
    max_bytes: int
    max_redirects: int
    max_pixels: int
    user_agent: str

    @classmethod
    def from_config(cls, config) -> "UrlLimits":
        return cls(**{f: config.get(f"download.{f}") for f in cls.__dataclass_fields__})


def fetch_picture(url: str, limits: UrlLimits, session=None):
    """The picture at ``url`` as an RGB PIL image, or a one-line UserError naming the URL
    and what is wrong (HTML, too large, truncated, redirect loop, HTTP status...)."""
    from PIL import Image

    from pipeline.core import httpfetch
    from pipeline.core.imagecheck import ImageRejected, verify_image

    own = session is None
    if own:
        session = httpfetch.make_session(limits.max_redirects, limits.user_agent)
    try:
        data, content_type = httpfetch.get_body(session, url, limits)
    except httpfetch.FetchFailed as exc:
        raise UserError(f"image URL {url}: {exc.reason}") from None
    finally:
        if own:
            session.close()
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype.startswith(_NOT_IMAGE):
        raise UserError(f"image URL {url}: not an image (the server sent {ctype}, "
                        f"{len(data):,} bytes)")
    try:
        verify_image(data, limits.max_pixels, full_decode=True, content_type=content_type)
    except ImageRejected as exc:
        raise UserError(f"image URL {url}: {exc.reason}") from None
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def listing_image_urls(root, listing_id: int, max_images: int, client=None) -> list[str]:
    """A listing's image URLs (by rank) from the Etsy API: one request, within the client's
    rate and daily quota; one-line errors for a listing Etsy does not know or an API
    failure."""
    from pipeline.etsy.client import EtsyClient
    from pipeline.etsy.errors import EtsyError, QuotaExhausted, Stopped

    own = client is None
    try:
        if own:
            try:
                client = EtsyClient.from_root(root)
            except UserError as exc:
                raise UserError(f"listing {listing_id} is not in the index, and its images "
                                f"cannot be fetched from Etsy: {exc}") from None
        data = client.listings_batch([int(listing_id)], includes="Images")
    except QuotaExhausted as exc:
        raise UserError(f"listing {listing_id} is not in the index and the Etsy API quota is spent "
                        f"(again in {exc.retry_after_s:.0f} s)") from None
    except (EtsyError, Stopped) as exc:
        raise UserError(f"listing {listing_id} is not in the index and the Etsy API failed: {exc}") from None
    finally:
        if own and client is not None:
            client.close()
    found = [r for r in (data.get("results") or []) if int(r.get("listing_id", -1)) == int(listing_id)]
    if not found:
        raise UserError(f"listing {listing_id} is not in the index and Etsy does not know it")
    images = sorted(found[0].get("images") or [], key=lambda im: im.get("rank") or 0)
    urls = [im.get("url_570xN") or im.get("url_fullxfull") for im in images]
    urls = [u for u in urls if u][:max_images]
    if not urls:
        raise UserError(f"listing {listing_id} is not in the index and has no images on Etsy")
    return urls
