"""One module per command group. Each exposes ``register(subparsers)``, which adds its
parsers with ``set_defaults(func=handler)``; ``handler(args) -> int``. Modules are found
by name, so adding a command touches no shared file. Heavy imports stay inside handlers."""
