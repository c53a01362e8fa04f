"""SSH library for the worker hosts: hosts, transport, remote commands. Knows nothing of stages."""
