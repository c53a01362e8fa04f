"""Fault injection for the local Etsy API: the fault switches (``NAME=P[:BURST]``), drawn
per request from a seeded generator, and the corruption of one object in an answer
(``bad_fields``).
"""
from __future__ import annotations

import collections
import random
import threading

FAULT_NAMES = ("drop", "slow", "429", "5xx", "html", "malformed", "error200", "bad_fields")


def parse_fault(text: str) -> tuple[str, float, int]:
    """``NAME=P[:BURST]`` (``5xx=0.1:3``) -> (name, probability, burst)."""
    name, _, rest = text.partition("=")
    name = name.strip()
    if name not in FAULT_NAMES + ("vanish",):
        raise ValueError(f"unknown fault {name!r} (faults: {', '.join(FAULT_NAMES + ('vanish',))})")
    p_text, _, burst_text = rest.partition(":")
    try:
        p = float(p_text)
        burst = int(burst_text) if burst_text else 1
    except ValueError:
        raise ValueError(f"fault {text!r}: expected NAME=PROBABILITY[:BURST]") from None
    if not 0 <= p <= 1 or burst < 1:
        raise ValueError(f"fault {text!r}: probability must be 0..1 and burst >= 1")
    return name, p, burst


class Faults:
    """The fault switches, drawn from a seeded generator (deterministic for one client)."""

    def __init__(self, seed: int = 0):
        self.lock = threading.Lock()
        self.seed = seed
        self.rng = random.Random(seed)
        self.spec: dict[str, tuple[float, int]] = {}
        self.storm: dict[str, int] = {}
        self.vanish = 0.0
        self.slow_s = 2.0
        self.retry_after_s = 1
        self.injected: collections.Counter = collections.Counter()
        self.faulted_responses = 0      # a response can carry two faults: counted once here
        self.queued: collections.Counter = collections.Counter()

    def next(self, name: str, n: int) -> None:
        """The next ``n`` API requests get this fault (deterministic, for tests)."""
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r}")
        with self.lock:
            self.queued[name] = n

    def set(self, name: str, p: float, burst: int = 1) -> None:
        with self.lock:
            if name == "vanish":
                self.vanish = p
            elif p <= 0:
                self.spec.pop(name, None)
                self.storm.pop(name, None)
            else:
                self.spec[name] = (p, burst)

    def clear(self) -> None:
        with self.lock:
            self.spec.clear()
            self.storm.clear()
            self.queued.clear()
            self.vanish = 0.0

    def draw(self) -> list[str]:
        """The faults that hit this request."""
        hit = []
        with self.lock:
            for name in FAULT_NAMES:
                if self.queued.get(name, 0) > 0:
                    self.queued[name] -= 1
                    hit.append(name)
                    continue
                if name not in self.spec:
                    continue
                p, burst = self.spec[name]
                if self.storm.get(name, 0) > 0:
                    self.storm[name] -= 1
                    hit.append(name)
                elif self.rng.random() < p:
                    self.storm[name] = burst - 1
                    hit.append(name)
            for name in hit:
                self.injected[name] += 1
            self.faulted_responses += bool(hit)
        return hit

    def vanished(self, listing_id: int) -> bool:
        if self.vanish <= 0:
            return False
        return random.Random(f"vanish:{self.seed}:{listing_id}").random() < self.vanish

    def as_dict(self) -> dict:
        with self.lock:
            return {"faults": {k: [p, b] for k, (p, b) in self.spec.items()},
                    "vanish": self.vanish, "slow_s": self.slow_s,
                    "retry_after_s": self.retry_after_s, "injected": dict(self.injected),
                    "faulted_responses": self.faulted_responses}


def corrupt(value, rng: random.Random):
    """One listing (or review) with a field missing or of the wrong type."""
    if not isinstance(value, dict) or not value.get("results"):
        return value
    item = rng.choice(value["results"])
    if "listing_id" in item and "price" in item:
        choice = rng.choice(("no_id", "price_text", "title_number", "image_rank_text"))
        if choice == "no_id":
            del item["listing_id"]
        elif choice == "price_text":
            item["price"] = "12.50"
        elif choice == "title_number":
            item["title"] = 12345
        elif item.get("images"):
            item["images"][0]["rank"] = "first"
        else:
            item["listing_id"] = str(item["listing_id"]) + "x"
    elif "rating" in item:
        item["create_timestamp"] = "yesterday"
    return value

