"""A small real stage that proves the stage contract in tests."""
