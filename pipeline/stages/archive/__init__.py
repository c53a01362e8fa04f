"""The archive stages: tar (bg-removed images in tars of 10,000) and primary (each listing's primary image)."""
