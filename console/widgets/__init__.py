"""The console's panels, one per file; each shows data it is given and polls nothing."""
