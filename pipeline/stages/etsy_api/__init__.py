"""The etsy-api stage: the local Etsy API (sandbox only)."""
