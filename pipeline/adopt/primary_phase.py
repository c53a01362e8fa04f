"""The primary phase of an adoption: the original's primary tars walked and checked against
primary_index.json (or, without one, each listing's last member taken), linked into
imageprimary/ (the last tar copied: the primary stage appends to it) and recorded in
primary_index.bin, the new system's committed state."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline.core import db as dbm
from pipeline.adopt import tars as tz
from pipeline.adopt.files import place
from pipeline.adopt.jsonstream import JSONShapeError, iter_member
from pipeline.stages.archive.primary import PRIMARY_RE

PRIMARY_KEY = "adopt:primary"


class PrimaryPhase:
    """Methods of Adoption (pipeline/adopt/run.py)."""

    # ---- primary tars -----------------------------------------------------------------
    def _primary(self) -> None:
        from pipeline.stages.archive import primary as pm

        d = self.orig.primary_dir
        rel = os.path.relpath(d, self.orig.path)
        names = tz.list_tars(d, PRIMARY_RE)
        index_path = d / pm.JSON_NAME
        if not names:
            if index_path.exists():
                self.report.bad(f"{rel}", "primary_index.json names tars, but there are none",
                                "no primary tars adopted (imageselector run primary --full makes them)")
            else:
                self.report.note("the original has no primary tars")
            return
        new_dir = self.root.primary_dir
        if not self.dry and (new_dir / pm.BIN_NAME).exists():
            rec = dbm.get_state(self.conn, PRIMARY_KEY)
            have = pm.load_state(new_dir)
            if rec and rec.get("generation") == have.generation:
                if self.root.config.get("archive.primary_json") and \
                        not (new_dir / pm.JSON_NAME).exists():
                    pm.write_json_index(new_dir, have)   # a run killed between the two
                self.report.count("primary", "adopted before", len(have.records))
                return
            self.report.bad(f"{rel}", "the new root already has primary tars of its own",
                            "the original's primary tars were not adopted")
            return
        checks: dict[int, tz.TarCheck] = {}
        seen: set[str] = set()
        index_ok = index_path.exists()
        if not index_ok:
            self.report.bad(f"{rel}/{pm.JSON_NAME}", "missing",
                            "rebuilt from a header walk of every primary tar (the last member of "
                            "a listing counts)")
        else:
            try:
                for name, mapping in iter_member(index_path, "tars"):
                    self._check_stop()
                    seen.add(name)
                    if name not in names:
                        self.report.inconsistent("tars_missing", f"{rel}/{name} is named by "
                                                                 f"{pm.JSON_NAME} but missing")
                        continue
                    self._primary_tar(d / name, mapping if isinstance(mapping, dict) else None,
                                      rel, checks)
            except (JSONShapeError, UnicodeDecodeError) as exc:
                index_ok = False
                self.report.bad(f"{rel}/{pm.JSON_NAME}", f"unreadable ({exc})",
                                "rebuilt from a header walk of every primary tar")
        for name in names:
            if name not in seen:
                self._check_stop()
                if index_ok:
                    self.report.inconsistent("primary_index_disagrees",
                                             f"{rel}/{name} is not in {pm.JSON_NAME}")
                self._primary_tar(d / name, None, rel, checks)
        records = self._primary_records(index_path if index_ok else None, checks, rel)
        if self.dry:
            self.report.count("primary", "tars adoptable", len(checks))
            self.report.count("primary", "listings adoptable", len(records))
            return
        self._write_primary(d, checks, records)

    def _primary_tar(self, path: Path, mapping, rel: str, checks: dict) -> None:
        check = tz.check_tar(path, mapping, self.sample, self.rng, with_sha=False)
        for issue in check.issues:
            self.report.inconsistent("primary_index_disagrees", issue)
        if not check.ok:
            self.report.bad(f"{rel}/{path.name}", check.problems[0],
                            "refused (not linked): its listings' primary images are made again "
                            "from the all-image tars by the primary stage")
            return
        checks[int(PRIMARY_RE.match(path.name).group(1))] = check

    def _primary_records(self, index_path: Path | None, checks: dict, rel: str) -> dict:
        """listing_id -> (tar number, data offset, size, header offset), from the index's
        reverse map (checked against the tars) or, without one, the last member of each
        listing. The reverse map holds header offsets (the original's meaning), each turned
        into its member's data offset through the walk (extension headers included); a data
        offset there is recognised too."""
        members: dict[tuple[int, int], tuple[str, int, int]] = {}  # (tar, data offset) -> (name, size, header)
        headers: dict[tuple[int, int], int] = {}                   # (tar, header offset) -> data offset
        for number, check in checks.items():
            for m in check.members:
                members[(number, m.offset)] = (m.name, m.size, m.header)
                headers[(number, m.header)] = m.offset
        out: dict[int, tuple[int, int, int, int]] = {}
        if index_path is None:
            for number in sorted(checks):
                for m in checks[number].members:
                    lid = tz.parse_primary(m.name)
                    if lid is not None:
                        out[lid] = (number, m.offset, m.size, m.header)
            return out
        try:
            for key, value in iter_member(index_path, "reverse"):
                ok = key.isdigit() and isinstance(value, list) and len(value) == 2 \
                    and isinstance(value[1], int)
                number = None
                if ok:
                    m = PRIMARY_RE.match(str(value[0]))
                    number = int(m.group(1)) if m else None
                if number is None or number not in checks:
                    self.report.inconsistent("primary_index_disagrees",
                                             f"listing {key}: points at {value!r}, not an adopted tar")
                    continue
                # the header offset first (the original's meaning), then a data offset
                off = next((o for o in (headers.get((number, value[1])), value[1])
                            if o is not None and members.get((number, o), ("",))[0] == f"{key}.jpg"),
                           value[1])
                got = members.get((number, off))
                if got is None or got[0] != f"{key}.jpg":
                    self.report.inconsistent("primary_index_disagrees",
                                             f"listing {key}: {value[0]} {value[1]} is "
                                             f"{'no member' if got is None else got[0]}")
                    continue
                out[int(key)] = (number, off, got[1], got[2])
        except (JSONShapeError, UnicodeDecodeError) as exc:
            self.report.bad(f"{rel}/primary_index.json", f"reverse map unreadable ({exc})",
                            "primary records rebuilt from the tars' last members")
            return self._primary_records(None, checks, rel)
        return out

    def _write_primary(self, d: Path, checks: dict, records: dict) -> None:
        from pipeline.stages.archive import primary as pm

        new_dir = self.root.primary_dir
        new_dir.mkdir(parents=True, exist_ok=True)
        last = max(checks) if checks else None
        for number, check in sorted(checks.items()):
            name = pm.primary_tar_name(number)
            linkable = number != last and check.size == tz.archive_length(check.end)
            placed = place(d / check.path.name, new_dir / name,
                           self.link_mode if linkable else "copy", self.durable)
            self.report.count("files", placed.how)
            self.report.count("files", "bytes copied", placed.bytes_copied)
        image_of = dict(self.conn.execute("SELECT listing_id, MIN(image_id) FROM images "
                                          "WHERE is_primary = 1 GROUP BY listing_id"))
        state = pm.PrimaryState(1, {}, {}, {})
        for lid, (number, off, size, header) in records.items():
            state.records[lid] = pm.PrimaryRecord(lid, int(image_of.get(lid, 0)), number, off, size,
                                                  header)
        for number, check in checks.items():
            state.ends[number] = check.end
            state.counts[number] = len(check.members)
        from pipeline.core.fsutil import atomic_write_bytes

        # the record first: a .bin without it would read as "made by the new system"
        with dbm.transaction(self.conn):
            dbm.put_state(self.conn, PRIMARY_KEY, {"generation": state.generation,
                                                   "tars": sorted(checks)})
        atomic_write_bytes(new_dir / pm.BIN_NAME, pm.encode_state(state))
        if self.root.config.get("archive.primary_json"):
            pm.write_json_index(new_dir, state)
        self.report.count("primary", "tars", len(checks))
        self.report.count("primary", "listings", len(records))
