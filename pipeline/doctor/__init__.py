"""`imageselector doctor`: everything a real weekly run needs, checked in one go, one line per
check with the fix for each problem (the exact command or config key).

- check.py: the Check type (area, name, ok, severity, text, fix) and the exit rule;
- registry.py: the areas (each a function ``fn(ctx) -> list[Check]``); stages register theirs
  from ``pipeline/stages/<stage>/doctor.py`` (the backup volumes), found on first use;
- runner.py: ``run_checks(root, ...)``, what the CLI prints and a console panel can show;
- one module per area of its own: etsy, workers (+ probe, the script run on each worker),
  alerts, schedule, safety.
"""
