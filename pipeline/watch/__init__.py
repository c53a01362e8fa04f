"""The watch job (`imageselector watch --once`, every 15 minutes from the schedule): what can
go wrong while nobody runs a stage reaches the operator.

It needs no running stage. It reads the status snapshot (pipeline/status/snapshot.py), asks
each check what is wrong now, and compares that with the conditions still open from earlier
runs (table ``watch_conditions``): a new condition sends its alert once, a condition that is
still there sends nothing, a condition that went away sends one ``condition_cleared``
("ok again: ...").

One module per job: ``conditions`` (what a condition is, its SMS-length first line),
``context`` (what a check gets), one module per check (``backups``, ``disk``, ``stages``,
``schedule``, ``weekly``), ``store`` (the table), ``notify`` (new / open / cleared -> alerts),
``job`` (one pass, under a lock).
"""
