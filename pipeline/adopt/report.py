"""The adoption report: what the original holds, what was (or would be) adopted, what is
inconsistent, which inputs were refused and what was done about each, and the estimate.

One structure, printed as text (`imageselector adopt`) or JSON (`--json`); the last real
run's report is also kept in run/adopt/report.json.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

MAX_EXAMPLES = 5

# Inconsistency kinds, with the sentence the text report uses for each.
KINDS = {
    "db_rows_in_no_shard": "DB rows tarred in the original but in no shard",
    "shard_rows_without_db_row": "shard rows with no DB row",
    "tars_missing": "tars named by an index or the DB but missing",
    "hash_mismatches": "vector hashes that disagree with image_index.json",
    "db_state_disagrees": "DB states that disagree with the shards or tars",
    "db_tarred_not_in_tar": "images tarred in the original DB that no adopted tar holds",
    "duplicate_index_rows": "images indexed twice",
    "tar_index_disagrees": "tar index entries that disagree with the tar itself",
    "tar_members_not_indexed": "tar members in no adopted shard",
    "tar_rows_out_of_range": "tar members outside their tar's global row range",
    "primary_index_disagrees": "primary index entries that disagree with the primary tars",
    "loose_files_missing": "loose image files the DB state needs but the original lacks",
    "bad_rows": "DB rows that cannot be mapped",
}


@dataclass
class Report:
    source: str
    target: str
    dry_run: bool
    started: float = field(default_factory=time.time)
    finished: float | None = None
    outcome: str = "running"   # adopted, adopted with problems, dry run, stopped, refused
    found: dict = field(default_factory=dict)
    adopted: dict = field(default_factory=dict)
    inconsistencies: dict = field(default_factory=dict)
    bad_inputs: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    estimate: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)     # phase -> seconds

    # ---- recording -------------------------------------------------------------
    def inconsistent(self, kind: str, example: str | None = None, n: int = 1) -> None:
        entry = self.inconsistencies.setdefault(kind, {"count": 0, "examples": []})
        entry["count"] += n
        if example is not None and example not in entry["examples"] \
                and len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(example)

    def bad(self, what: str, problem: str, done: str) -> None:
        """A refused or repaired input: what it is, what is wrong, what was done."""
        item = {"what": what, "problem": problem, "done": done}
        if item not in self.bad_inputs:
            self.bad_inputs.append(item)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def count(self, section: str, key: str, n: int = 1) -> None:
        sec = self.adopted.setdefault(section, {})
        sec[key] = sec.get(key, 0) + n

    def finish(self, outcome: str | None = None) -> "Report":
        self.finished = time.time()
        if outcome is not None:
            self.outcome = outcome
        elif self.dry_run:
            self.outcome = "dry run"
        else:
            self.outcome = "adopted with problems" if self.bad_inputs else "adopted"
        return self

    @property
    def ok(self) -> bool:
        return not self.bad_inputs and self.outcome in ("adopted", "dry run")

    def to_json(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        out["duration_s"] = round((self.finished or time.time()) - self.started, 3)
        return out

    # ---- text ---------------------------------------------------------------------
    def render_text(self) -> str:
        lines = [f"{'DRY RUN: ' if self.dry_run else ''}adopt {self.source} -> {self.target}"]
        f = self.found
        if f:
            lines.append("original holds:")
            for name, n in (f.get("tables") or {}).items():
                lines.append(f"  table {name:<17} {_n(n):>12} rows")
            codes = f.get("images_by_code") or {}
            if codes:
                lines.append("  images by download_done: " +
                             ", ".join(f"{k}: {_n(v)}" for k, v in codes.items()))
            if "shards" in f:
                lines.append(f"  index shards: {len(f['shards'])} "
                             f"({_n(sum(s.get('rows') or 0 for s in f['shards']))} rows)")
            for key, label in (("tars", "all-image tars"), ("primary_tars", "primary tars")):
                if key in f:
                    lines.append(f"  {label}: {_n(f[key])}")
            if f.get("loose"):
                lines.append("  loose files: " + ", ".join(f"{k} {_n(v)}" for k, v in f["loose"].items()))
        verb = "would adopt" if self.dry_run else "adopted"
        if self.adopted:
            lines.append(f"{verb}:")
            for section, values in self.adopted.items():
                if isinstance(values, dict):
                    body = ", ".join(f"{k} {_n(v) if isinstance(v, int) else v}" for k, v in values.items())
                else:
                    body = str(values)
                lines.append(f"  {section}: {body}")
        if self.inconsistencies:
            lines.append("inconsistent:")
            for kind, entry in self.inconsistencies.items():
                lines.append(f"  {KINDS.get(kind, kind)}: {_n(entry['count'])}")
                for ex in entry["examples"]:
                    lines.append(f"    e.g. {ex}")
        if self.bad_inputs:
            lines.append("bad input:")
            for item in self.bad_inputs:
                lines.append(f"  {item['what']}: {item['problem']} -> {item['done']}")
        for n in self.notes:
            lines.append(f"note: {n}")
        e = self.estimate
        if e:
            parts = []
            if "seconds" in e:
                parts.append(f"about {_duration(e['seconds'])}")
            if "extra_bytes" in e:
                parts.append(f"{_bytes(e['extra_bytes'])} of extra disk")
            if e.get("free_bytes") is not None:
                parts.append(f"{_bytes(e['free_bytes'])} free")
            lines.append(("estimate: " if self.dry_run else "estimate was: ") + ", ".join(parts))
        took = (self.finished or time.time()) - self.started
        if self.timings:
            lines.append("took: " + ", ".join(f"{k} {_duration(v)}" for k, v in self.timings.items()))
        lines.append(f"outcome: {self.outcome} ({_duration(took)})")
        return "\n".join(lines)


def _n(v) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _duration(s: float) -> str:
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class ItemLog:
    """The report entries of one unit of work (a shard, a tar), kept with its done-mark so
    that a resumed adoption reports them again without redoing the unit."""

    def __init__(self, entries: list | None = None):
        self.entries = entries or []

    def bad(self, what: str, problem: str, done: str) -> None:
        self.entries.append(["bad", [what, problem, done]])

    def inconsistent(self, kind: str, example: str | None = None, n: int = 1) -> None:
        self.entries.append(["inconsistent", [kind, example, n]])

    def note(self, text: str) -> None:
        self.entries.append(["note", [text]])

    def count(self, section: str, key: str, n: int = 1) -> None:
        self.entries.append(["count", [section, key, n]])

    def apply(self, report: Report) -> None:
        for kind, args in self.entries:
            getattr(report, kind)(*args)

    def dumps(self, **extra) -> str:
        import json

        return json.dumps({"log": self.entries, **extra})

    @classmethod
    def loads(cls, text: str) -> tuple["ItemLog", dict]:
        import json

        try:
            value = json.loads(text)
        except (TypeError, ValueError):
            return cls(), {}
        if not isinstance(value, dict):
            return cls(), {}
        return cls(value.pop("log", [])), value
