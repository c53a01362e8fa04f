"""The tars phase of an adoption: every all-image tar of the original walked, hashed,
sampled and compared with tar_index.json (streamed), then linked into imageall_tars/ with
its per-tar index; a missing or damaged tar is named and its images keep a reason."""
from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.adopt import scratch
from pipeline.adopt import tars as tz
from pipeline.adopt.files import place
from pipeline.adopt.jsonstream import JSONShapeError, iter_member
from pipeline.adopt.report import ItemLog
from pipeline.stages.archive.tarmembers import TAR_RE


class TarPhase:
    """Methods of Adoption (pipeline/adopt/run.py)."""

    # ---- tars -------------------------------------------------------------------------
    def _tars(self) -> None:
        d = self.orig.tars_dir
        rel = os.path.relpath(d, self.orig.path)
        names = tz.list_tars(d, TAR_RE)
        index_path = d / "tar_index.json"
        if not names and not index_path.exists():
            self.report.note("the original has no all-image tars")
            return
        self.root.tars_dir.mkdir(parents=True, exist_ok=True)
        seen: set[str] = set()
        index_ok = False
        if not index_path.exists():
            self.report.bad(f"{rel}/tar_index.json", "missing",
                            "every tar's offsets rebuilt from a header walk of the tar")
        else:
            try:
                for name, mapping in iter_member(index_path, "tars"):
                    self._check_stop()
                    seen.add(name)
                    if name not in names:
                        self._missing_tar(name, mapping, rel)
                        continue
                    self._tar(name, mapping if isinstance(mapping, dict) else None, rel, True)
                index_ok = True
            except (JSONShapeError, UnicodeDecodeError) as exc:
                self.report.bad(f"{rel}/tar_index.json", f"unreadable ({exc})",
                                "offsets of the tars not read yet rebuilt from header walks")
        for name in names:
            if name not in seen:
                self._check_stop()
                self._tar(name, None, rel, index_ok)
        if index_ok:
            self._check_reverse(index_path, rel)
        self._check_tar_rows()

    def _missing_tar(self, name: str, mapping, rel: str) -> None:
        item = f"tar:{name}"
        if self._item_done(item) is not None:
            return
        log = ItemLog()
        keys = [tz.parse_member(m) for m in (mapping or {})]
        keys = [k for k in keys if k]
        log.inconsistent("tars_missing", f"{rel}/{name} is named by tar_index.json but missing")
        log.bad(f"{rel}/{name}", "missing (named by tar_index.json)",
                f"its {len(keys):,} images stay embedded and searchable; their bytes are lost "
                f"unless the tar is restored (then adopt again)")
        self._record(item, log, "INSERT OR REPLACE INTO scratch.tarbad VALUES (?, ?, ?, ?)",
                     [(a, b, name, f"its tar {name} is missing") for a, b in keys], status="missing")

    def _tar(self, name: str, mapping: dict | None, rel: str, index_present: bool) -> None:
        from pipeline.stages.archive.tarindex import idx_members, read_idx, write_idx
        from pipeline.stages.archive.tarmembers import tar_number

        item = f"tar:{name}"
        if self._item_done(item) is not None:
            return
        log = ItemLog()
        src = self.orig.tars_dir / name
        number = tar_number(name)
        first_row = number * self.per_tar
        new = self.root.tars_dir / name
        if not self.dry and new.exists():
            idx = read_idx(self.root.tars_dir, name)
            if idx is not None:
                members = idx_members(idx)
                log.count("tars", "adopted before")
                self._record_tar(item, name, members, log)
                return
        if mapping is None and index_present:
            log.inconsistent("tar_index_disagrees", f"{rel}/{name} is not in tar_index.json "
                                                    f"(offsets from a header walk)")
        t0 = time.perf_counter()
        check = tz.check_tar(src, mapping, self.sample, self.rng, with_sha=not self.quick)
        self.log.info("%s: %d members checked in %.1f s", name, len(check.members), time.perf_counter() - t0)
        for issue in check.issues:
            log.inconsistent("tar_index_disagrees", issue)
        if check.data_offsets:
            log.note(f"{rel}/{name}: tar_index.json gives {check.data_offsets:,} data offsets, not "
                     f"the original's header offsets; each member found by its data offset")
        if not check.ok:
            keys = [tz.parse_member(m) for m in (mapping or {})] or \
                [tz.parse_member(m) for m in check.walked]
            keys = [k for k in keys if k]
            log.bad(f"{rel}/{name}", check.problems[0],
                    f"refused (not linked): its images stay embedded and searchable, their bytes "
                    f"are not adopted (restore the tar, then adopt again)")
            self._record(item, log, "INSERT OR REPLACE INTO scratch.tarbad VALUES (?, ?, ?, ?)",
                         [(a, b, name, f"its tar {name} was refused ({check.problems[0]})")
                          for a, b in keys], status=f"refused ({check.problems[0]})")
            return
        if self.dry:
            log.count("tars", "checked and adoptable" if not self.quick else "adoptable (not hashed)")
            self._record_tar(item, name, check.members, log)
            return
        placed = place(src, new, self.link_mode, self.durable)
        write_idx(self.root.tars_dir, name, first_row, check.members, check.size)
        log.count("tars", "adopted")
        log.count("files", placed.how)
        log.count("files", "bytes copied", placed.bytes_copied)
        self._record_tar(item, name, check.members, log)

    def _record_tar(self, item: str, name: str, members, log: ItemLog) -> None:
        rows = []
        for m in members:
            key = tz.parse_member(m.name)
            if key:
                rows.append((key[0], key[1], name, int(m.offset), int(m.header)))
            else:
                log.inconsistent("tar_index_disagrees", f"{name}: member {m.name} is not named "
                                                        f"{{listing_id}}_{{image_id}}.jpg")
        log.count("tar members", "recorded", len(rows))
        self._record(item, log, "INSERT OR REPLACE INTO scratch.tarpos (listing_id, image_id, "
                                "tar_name, tar_offset, tar_header) VALUES (?, ?, ?, ?, ?)", rows)

    def _check_reverse(self, index_path: Path, rel: str) -> None:
        """The reverse map of tar_index.json against the tars: each entry the member's header
        offset (the original's meaning) or, recognised too, its data offset."""
        if scratch.is_done(self.x, "tar-reverse"):
            return
        batch = []

        def flush():
            with scratch.Tx(self.x):
                self.x.executemany("INSERT OR REPLACE INTO scratch.rev VALUES (?, ?, ?, ?)", batch)
            batch.clear()

        try:
            for key, value in iter_member(index_path, "reverse"):
                a, sep, b = key.partition("_")
                if not (sep and a.isdigit() and b.isdigit() and isinstance(value, list) and len(value) == 2):
                    self.report.inconsistent("tar_index_disagrees", f"reverse entry {key!r}: {value!r}")
                    continue
                batch.append((int(a), int(b), value[0], value[1]))
                if len(batch) >= 50_000:
                    flush()
        except (JSONShapeError, UnicodeDecodeError) as exc:
            self.report.note(f"{rel}/tar_index.json: its reverse map is unreadable ({exc}); not checked")
        if batch:
            flush()
        bad = self.x.execute(
            "SELECT r.listing_id, r.image_id, r.tar_name, r.tar_offset, t.tar_name, t.tar_header, "
            "t.tar_offset FROM scratch.rev r LEFT JOIN scratch.tarpos t ON t.listing_id = "
            "r.listing_id AND t.image_id = r.image_id WHERE t.tar_name IS NULL OR t.tar_name != "
            "r.tar_name OR r.tar_offset NOT IN (t.tar_header, t.tar_offset)").fetchall()
        for lid, iid, rt, ro, tt, th, to in bad:
            where = f"{tt} (header at {th}, data at {to})" if tt else "none of them"
            self.report.inconsistent("tar_index_disagrees", f"reverse map puts {lid}_{iid} at {rt} "
                                                            f"{ro}; the tars have it in {where}")
        with scratch.Tx(self.x):
            self.x.execute("DELETE FROM scratch.rev")
            scratch.mark_done(self.x, "tar-reverse")

    def _check_tar_rows(self) -> None:
        r = self.report
        n = self.x.execute("SELECT COUNT(*) FROM scratch.tarpos t WHERE NOT EXISTS (SELECT 1 FROM "
                           "scratch.pos p WHERE p.listing_id = t.listing_id AND "
                           "p.image_id = t.image_id)").fetchone()[0]
        if n:
            ex = self.x.execute("SELECT listing_id, image_id, tar_name FROM scratch.tarpos t WHERE "
                                "NOT EXISTS (SELECT 1 FROM scratch.pos p WHERE p.listing_id = "
                                "t.listing_id AND p.image_id = t.image_id) LIMIT 3").fetchall()
            r.inconsistent("tar_members_not_indexed", f"{ex[0][0]}_{ex[0][1]} in {ex[0][2]}", n)
            for lid, iid, t in ex[1:]:
                r.inconsistent("tar_members_not_indexed", f"{lid}_{iid} in {t}", 0)
        rows = self.x.execute(
            "SELECT t.listing_id, t.image_id, t.tar_name, p.global_row FROM scratch.tarpos t "
            "JOIN scratch.pos p ON p.listing_id = t.listing_id AND p.image_id = t.image_id "
            "WHERE CAST(substr(t.tar_name, 10, length(t.tar_name) - 13) AS INTEGER) != p.global_row / ? "
            "LIMIT 1000", (self.per_tar,)).fetchall()
        for lid, iid, t, g in rows:
            r.inconsistent("tar_rows_out_of_range", f"{lid}_{iid} (global row {g}) is in {t}")
