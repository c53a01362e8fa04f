"""The console's modal screens (help, confirmations), one per file."""
