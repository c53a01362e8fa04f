"""The sandbox catalogue's taxonomy: Etsy's real furniture subtree (root 967, ``data/db/
furniture_taxonomy_ids.json``), with names and parents reconstructed (the ids come as a flat
pre-order list), and the shape drawn for each node's listings.
"""
from __future__ import annotations

from dataclasses import dataclass

FURNITURE_ROOT = 967

# (id, parent, name, shape of the furniture drawn for its listings). Pre-order.
TAXONOMY: list[tuple[int, int | None, str, str]] = [
    (891, None, "Home & Living", ""),
    (967, 891, "Furniture", "table"),
    (968, 967, "Bedroom Furniture", "bed"),
    (969, 968, "Beds & Headboards", "bed"),
    (12455, 969, "Bed Frames", "bed"),
    (12456, 969, "Headboards", "bed"),
    (970, 968, "Dressers & Armoires", "cabinet"),
    (972, 968, "Nightstands", "cabinet"),
    (971, 968, "Wardrobes", "cabinet"),
    (12470, 968, "Bed Benches", "bench"),
    (973, 967, "Kitchen & Dining Furniture", "table"),
    (974, 973, "Buffets & China Cabinets", "cabinet"),
    (975, 973, "Dining Chairs", "chair"),
    (976, 973, "Dining Sets", "table"),
    (977, 973, "Dining Tables", "table"),
    (11837, 973, "Bar Carts", "shelf"),
    (978, 973, "Kitchen Islands", "table"),
    (979, 967, "Entryway Furniture", "bench"),
    (12403, 979, "Coat Racks", "lamp"),
    (12405, 979, "Entryway Benches", "bench"),
    (12406, 979, "Hall Trees", "shelf"),
    (980, 967, "Living Room Furniture", "sofa"),
    (981, 980, "Armchairs", "chair"),
    (982, 980, "Coffee Tables", "table"),
    (983, 980, "Console Tables", "table"),
    (985, 980, "Couches & Sofas", "sofa"),
    (986, 980, "End Tables", "table"),
    (987, 980, "Ottomans & Poufs", "stool"),
    (988, 980, "TV Stands", "cabinet"),
    (989, 967, "Home Office Furniture", "desk"),
    (990, 989, "Desks", "desk"),
    (12369, 990, "Standing Desks", "desk"),
    (12370, 990, "Writing Desks", "desk"),
    (991, 989, "Office Chairs", "chair"),
    (992, 989, "Filing Cabinets", "cabinet"),
    (993, 967, "Storage & Organization", "shelf"),
    (12371, 993, "Cubbies", "shelf"),
    (12372, 993, "Storage Benches", "bench"),
    (994, 967, "Outdoor Furniture", "bench"),
    (11355, 994, "Adirondack Chairs", "chair"),
    (11356, 994, "Hammocks", "bench"),
    (998, 994, "Patio Sets", "table"),
    (996, 994, "Outdoor Benches", "bench"),
    (12468, 994, "Outdoor Tables", "table"),
    (12216, 994, "Porch Swings", "bench"),
    (997, 994, "Garden Chairs", "chair"),
    (999, 967, "Nursery & Kids' Furniture", "crib"),
    (1000, 999, "Cribs", "crib"),
    (1001, 999, "Kids' Chairs", "chair"),
    (12408, 999, "Changing Tables", "cabinet"),
    (1029, 891, "Home Decor", "lamp"),
    (1030, 1029, "Lamps", "lamp"),
    (66, None, "Art & Collectibles", ""),
    (67, 66, "Prints", ""),
]


@dataclass(frozen=True)
class Node:
    id: int
    parent: int | None
    name: str
    shape: str
    level: int
    path: tuple[int, ...]
