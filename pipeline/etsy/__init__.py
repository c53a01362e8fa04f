"""The Etsy Open API v3 client (sync, and whatever else reads the live API)."""
