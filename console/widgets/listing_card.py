"""One search result: the listing's primary image, title, price, shop, fused score and how
many models agreed. Enter (or a click) asks for more like this."""
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
        def __init__(self, result: dict):
            super().__init__()
            self.result = result

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
        price = r.get("price")
        price_text = (f"{price:,.2f}" if isinstance(price, (int, float)) else str(price or "-"))
        if r.get("currency"):
            price_text += f" {r['currency']}"
        yield Static(f"{price_text} · {fmt.shorten(r.get('shop') or '?', 24)}", classes="card-meta")
        models = r.get("models") or {}
        agree = r.get("agree") or len(models)
        ranks = " ".join(f"{SHORT.get(name, name[:6])}#{m.get('rank')}" for name, m in
                         sorted(models.items()) if isinstance(m, dict) and m.get("rank"))
        score = r.get("score")
        parts = [f"score {score:.4f}" if isinstance(score, (int, float)) else "",
                 f"{agree} model{'s' if agree != 1 else ''} agree" if agree else ""]
        yield Static(" · ".join(p for p in parts if p), classes="card-score")
        if ranks:
            yield Static(ranks, classes="card-ranks")

    def key_enter(self) -> None:
        self.post_message(self.Selected(self.result))

    def on_click(self) -> None:
        self.focus()
        self.post_message(self.Selected(self.result))
