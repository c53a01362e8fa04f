"""The catalogue changing under the crawler, as the live Etsy does: listings that end (sold
out, expired) and leave search and the batch call, listings and shops that are deleted (the
search index still lists a deleted listing for a while; the batch call, getShop and the
reviews call answer 404), and ``end_per_search``: after each search page, that many of the
listings the query has served so far end, so later pages shift forward (newest-first offset
paging then skips listings unless the crawler looks back).
"""
from __future__ import annotations

import random
import threading


class Changes:
    def __init__(self, seed: int = 0):
        self.lock = threading.Lock()
        self.rng = random.Random(f"changes:{seed}")
        self.ended: set[int] = set()
        self.deleted_listings: set[int] = set()
        self.deleted_shops: set[int] = set()
        self.end_per_search = 0

    def end(self, listing_ids) -> None:
        with self.lock:
            self.ended |= {int(i) for i in listing_ids}

    def delete_listings(self, listing_ids) -> None:
        with self.lock:
            self.deleted_listings |= {int(i) for i in listing_ids}

    def delete_shops(self, shop_ids) -> None:
        with self.lock:
            self.deleted_shops |= {int(i) for i in shop_ids}

    def is_ended(self, listing_id: int) -> bool:
        return listing_id in self.ended

    def is_deleted(self, listing_id: int) -> bool:
        return listing_id in self.deleted_listings

    def shop_deleted(self, shop_id: int) -> bool:
        return shop_id in self.deleted_shops

    def still_listed(self, found: list[int], listing_id) -> list[int]:
        """Search results (catalogue indexes) without the ended listings."""
        if not self.ended:
            return found
        ended = self.ended
        return [i for i in found if listing_id(i) not in ended]

    def after_search(self, served: list[int], listing_id) -> list[int]:
        """End ``end_per_search`` of the listings served so far (catalogue indexes); returns
        the listing ids ended."""
        with self.lock:
            n = min(self.end_per_search, len(served))
            if n <= 0:
                return []
            picked = [listing_id(i) for i in self.rng.sample(served, n)]
            self.ended |= set(picked)
            return picked

    def as_dict(self) -> dict:
        with self.lock:
            return {"ended": len(self.ended), "deleted_listings": len(self.deleted_listings),
                    "deleted_shops": len(self.deleted_shops), "end_per_search": self.end_per_search}
