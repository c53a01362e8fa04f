"""console: the operations console (Textual), the README's run command ends here."""
from __future__ import annotations

from imageselector.cli import add_root_argument


def cmd_console(args) -> int:
    from pipeline.core.root import Root

    root = Root.open(args.root)
    overrides = {}
    if args.refresh is not None:
        overrides["console.refresh_s"] = args.refresh
    if overrides:
        root = Root(root.path, {**root.overrides, **overrides})
    # Import here: `imageselector status` and friends never load Textual.
    from console.settings import ConsoleSettings

    settings = ConsoleSettings.from_config(root.config)
    if settings.thumbnails != "none":
        # textual-image asks the terminal for its graphics support, which it can only do
        # before the app takes the terminal over.
        try:
            import textual_image.widget  # noqa: F401
        except Exception:
            pass
    from console.app import ConsoleApp

    ConsoleApp(root, settings=settings).run()
    return 0


def register(sub) -> None:
    p = sub.add_parser("console", help="the operations console (live stages, queues, locks, "
                                       "backups, logs, search)")
    add_root_argument(p)
    p.add_argument("--refresh", type=float, default=None,
                   help="seconds between refreshes (default console.refresh_s)")
    p.set_defaults(func=cmd_console)
