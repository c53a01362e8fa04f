"""Result import handling: a fetched result verified against its manifest, its images
placed, its vectors imported into the index store, the downloads and the copies on both sides
cleaned up; a bad result is refused (and its worker put in error). A mixin of
core.Orchestrator: the methods use its flights, ledger, store, spool and totals."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from pipeline.batches.results import STATUS_REJECTED, ResultError
from pipeline.core import db as dbm
from pipeline.stages.orchestrate import intake
from pipeline.stages.orchestrate import ledger as lg
from pipeline.stages.orchestrate.state import Flight, Worker


class ResultsMixin:
    def _import_ready(self) -> None:
        while self.pending_imports:
            if not self.checkpoint():
                return
            batch_id = self.pending_imports.pop(0)
            f = self.flights.get(batch_id)
            if f is not None and f.result_path:
                self._intake(f)

    def _intake(self, f: Flight) -> None:
        w = self.workers.get(f.row.worker)
        path = Path(f.result_path)
        manifest = self.ledger.manifest(f.row.batch_id)
        try:
            result = intake.verify(path, manifest)
        except ResultError as exc:
            self._refuse(f, w, f"{w.name if w else f.row.worker}: {exc}", worker_error=True)
            return
        if result.status == STATUS_REJECTED:
            self._refuse(f, w, f"{f.row.worker} rejected batch {f.name}: {result.reason}",
                         worker_error=False)
            return
        expected = self.store.fingerprint
        if not result.fingerprint or (expected and result.fingerprint != expected):
            self._refuse(f, w, f"{f.row.worker}: result of {f.name} was made with model "
                               f"fingerprint {result.fingerprint}, the index holds {expected} "
                               f"(other models or weights); refused", worker_error=True)
            return
        batch_id = f.row.batch_id
        if f.reclaim:
            taken = self.ledger.reclaim(batch_id, result.ids)
            self.log.info("late result %s: %d of %d images still free, importing those",
                          f.name, taken, len(result.ids))
            if not taken:
                self._finish_imported(f.row, path, drop=True)
                self.flights.pop(batch_id, None)
                return
        else:
            failed = [(int(x["listing_id"]), int(x["image_id"])) for x in result.failed]
            for x in result.failed:
                n = self.ledger.fail_images([(int(x["listing_id"]), int(x["image_id"]))],
                                            f"worker {f.row.worker}: {x.get('reason')}"[:500],
                                            expect=dbm.BATCHED, batch_id=batch_id)
                self.totals["failed_images"] += n
            if failed:
                self.log.warning("batch %s: %d image(s) failed on %s", f.name, len(failed), f.row.worker)
            self.ledger.set_state(batch_id, lg.RETURNED)
        f.row.state = lg.RETURNED
        intake.place_images(result, self.root.bgremoved_dir)
        from pipeline.index import BatchRejected

        t0 = time.perf_counter()
        try:
            res = intake.import_vectors(self.store, self.conn, batch_id, result)
        except BatchRejected as exc:
            intake.remove_placed(result, self.root.bgremoved_dir)
            self._refuse(f, w, f"{f.row.worker}: result of {f.name} refused by the index: {exc}",
                         worker_error=True)
            return
        if not res.imported:
            self.ledger.mark_imported_if_done(batch_id)
        took = time.perf_counter() - t0
        if w is not None:
            rate = intake.result_rate(result)      # one batch's rate: per actor on Ray
            w.throughput.add_rate(rate * w.link.parallel if rate else rate)
            w.imported_batches += 1
            w.imported_images += res.imported
        self.totals["batches"] += 1
        self.totals["images"] += res.imported
        if self.report is not None:
            self.report.progress(res.imported, counter="done")
            self.report.progress(1, counter="batches")
        self.log.info("batch %s from %s imported: %d images%s in %.2f s", f.name, f.row.worker,
                      res.imported, f", {len(res.skipped)} skipped" if res.skipped else "", took)
        self.flights.pop(batch_id, None)
        f.row.state = lg.IMPORTED
        self._finish_imported(f.row, path)

    def _finish_imported(self, row: lg.BatchRow, path: Path | None, drop: bool = False) -> None:
        """After the import: raw downloads deleted, the result forgotten here and there."""
        if not drop:
            keys = self.ledger.batch_images(row.batch_id, (dbm.EMBEDDED, dbm.TARRED))
            intake.delete_downloads(self.root.download_dir, keys)
        local = self.spool / "in" / row.name
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        w = self.workers.get(row.worker)
        if w is not None:
            w.link.submit("cleanup", row.name, inbox=True)
        if row.state in (lg.IMPORTED, lg.FAILED):
            self.ledger.drop_manifest(row.batch_id)

    def _refuse(self, f: Flight, w: Worker | None, reason: str, worker_error: bool) -> None:
        self.log.error("%s", reason)
        if f.reclaim:
            self.flights.pop(f.row.batch_id, None)
        else:
            self._give_back(f, lg.FAILED, reason)
        self.totals["refused"] += 1
        if self.report is not None:
            self.report.set_counter("refused", self.totals["refused"])
        local = self.spool / "in" / f.name
        if local.is_dir():
            shutil.rmtree(local, ignore_errors=True)
        if w is not None:
            w.link.submit("cleanup", f.name, inbox=True)
            if worker_error:
                self._worker_error(w, reason)
