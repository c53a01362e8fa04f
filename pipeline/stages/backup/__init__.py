"""The backup stage: snapshots of data/, mirrors and their verification, restore."""
