"""One search result: the listing's primary image, title, price, shop, listing id, fused score,
how many models agreed and every model's rank. Enter (or a click) asks for more like this;
the pane's keys (open, more like this, same item elsewhere) act on the selected card."""
from __future__ import annotations

import os

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from pipeline.core import fmt


# Short model names for the per-model ranks line of a card.
SHORT = {"clip_vitb32": "B32", "clip_vitl14": "L14", "dinov2_base": "D2b", "dinov2_large": "D2L",
         "dinov3_base": "D3b", "clip_vitb32_text": "B32t", "clip_vitl14_text": "L14t"}


def image_widget_class(mode: str):
    """The thumbnail widget for a mode, or None. Inside tmux only half-blocks are safe
    (Sixel/Kitty passthrough there breaks the layout)."""
    if mode == "none":
        return None
    try:
        import textual_image.widget as tiw
    except Exception:  # not installed or no terminal to ask: text only
        return None
    if mode == "halfblock" or os.environ.get("TMUX"):
        return tiw.HalfcellImage
    return tiw.Image


class ListingCard(Vertical, can_focus=True):
    class Selected(Message):
        """Enter or a click on the card: more like this."""

        def __init__(self, result: dict):
            super().__init__()
            self.result = result

    class Focused(Message):
        """The card got the focus: the pane's keys act on it."""

        def __init__(self, card: "ListingCard"):
            super().__init__()
            self.card = card

    def __init__(self, rank: int, result: dict, thumbnail, image_class, **kwargs):
        super().__init__(classes="listing-card", **kwargs)
        self.rank = rank
        self.result = result
        self.thumbnail = thumbnail
        self.image_class = image_class

    def compose(self) -> ComposeResult:
        r = self.result
        if self.thumbnail is not None and self.image_class is not None:
            yield self.image_class(self.thumbnail, classes="card-image")
        else:
            yield Static("no image", classes="card-image card-noimage")
        yield Static(f"{self.rank}. {fmt.shorten(r.get('title') or '?', 60)}", classes="card-title")
        yield Static(price_and_shop(r), classes="card-meta")
        score = r.get("score")
        parts = [f"#{r.get('listing_id')}",
                 f"score {score:.4f}" if isinstance(score, (int, float)) else ""]
        yield Static(" · ".join(p for p in parts if p), classes="card-score")
        line = ranks_line(r)
        if line:
            # two rows (it wraps): all five models' ranks fit without being cut off
            yield Static(line, classes="card-ranks")

    def on_focus(self) -> None:
        self.post_message(self.Focused(self))

    def key_enter(self) -> None:
        self.post_message(self.Selected(self.result))

    def on_click(self) -> None:
        self.focus()
        self.post_message(self.Selected(self.result))


def price_and_shop(r: dict) -> str:
    price = r.get("price")
    text = f"{price:,.2f}" if isinstance(price, (int, float)) else str(price or "-")
    if r.get("currency"):
        text += f" {r['currency']}"
    shop = r.get("shop") or (f"shop {r['shop_id']}" if r.get("shop_id") else "?")
    return f"{text} · {fmt.shorten(shop, 24)}"


def ranks_line(r: dict) -> str:
    """How many models agree and each one's rank (same item: each model's score)."""
    models = r.get("models") or {}
    if models:
        agree = r.get("agree") or len(models)
        return f"{agree} agree: " + " ".join(
            f"{SHORT.get(name, name[:6])}#{m.get('rank')}" for name, m in sorted(models.items())
            if isinstance(m, dict) and m.get("rank"))
    scores = r.get("scores") or {}
    return " ".join(f"{SHORT.get(name, name[:6])} {v:.2f}" for name, v in sorted(scores.items()))
