"""The Etsy crawl (the seed's sync_data.py): taxonomy, listings with their images, shops,
reviews. ``crawl`` runs a pass, ``units`` holds the (taxonomy, price band) cursors,
``paging`` the overlapping search pages, ``batch`` the batch call (images, views, production
partners), ``reviews`` the reviews phase, ``store`` the idempotent writes, ``crew`` the
crawl threads. The stage is
pipeline/stages/sync/entry.py; the client is pipeline/etsy/client.py.
"""
