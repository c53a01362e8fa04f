"""What every stage stands on, importing no stage, no index and no search: the state DB,
config, the root, the stage runtime (kill/pause files, heartbeats, the stop ladder), locks and
the lock probe, alerts, processes, file helpers, errors, the schedule and the worker hosts."""
