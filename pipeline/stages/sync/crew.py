"""A few crawl threads sharing one client, with the stage contract kept by the main thread.

Each thread has its own DB connection and works on whole items (a crawl unit, a shop),
calling ``boundary()`` between pages: there it holds no transaction, so a pause can wait
there and a stop can end the item. The main thread watches the kill and pause files,
acknowledges a pause only once every thread is parked, and collects the outcome: the
daily quota, a refused key, failed items.
"""
from __future__ import annotations

import threading
import traceback
from typing import Callable

from pipeline.etsy.errors import AuthError, ClientError, EtsyError, QuotaExhausted, RequestFailed, Stopped


class Crew:
    def __init__(self, ctx, threads: int):
        self.ctx = ctx
        self.threads = max(1, int(threads))
        self.halt = threading.Event()
        self.cond = threading.Condition()
        self.pausing = False
        self.busy = 0
        self.quota: QuotaExhausted | None = None
        self.fatal: BaseException | None = None
        self.failures: list[str] = []

    # ---- for the client and the workers -------------------------------------------------
    def stopping(self) -> bool:
        # latch: whoever sees the stop first, the phase's outcome must say "stopped"
        if not self.halt.is_set() and self.ctx.stop_requested():
            self.halt.set()
        return self.halt.is_set()

    def _enter(self) -> bool:
        with self.cond:
            while self.pausing and not self.halt.is_set():
                self.cond.wait(0.2)
            if self.halt.is_set():
                return False
            self.busy += 1
            return True

    def _leave(self) -> None:
        with self.cond:
            self.busy -= 1
            self.cond.notify_all()

    def boundary(self) -> bool:
        """Between two pages: let a pause or a stop in. False: stop the item now."""
        self._leave()
        ok = self._enter()
        if not ok:
            with self.cond:  # keep busy balanced for the caller's final leave
                self.busy += 1
        return ok and not self.stopping()

    # ---- running ---------------------------------------------------------------------------
    def run(self, next_item: Callable[[object], object | None], work: Callable[[object, object], None],
            connect: Callable[[], object], describe: Callable[[object], str] = str) -> None:
        """Run ``work(item, conn)`` over ``next_item(conn)`` until none is left, a stop, or
        the quota; ``conn`` is the thread's own DB connection."""
        workers = [threading.Thread(target=self._worker, args=(next_item, work, connect, describe),
                                    name=f"sync-{i}", daemon=True) for i in range(self.threads)]
        for t in workers:
            t.start()
        ctx = self.ctx
        pause_file = ctx.root.file(ctx.stage.pause_file) if ctx.stage.pause_file else None
        while any(t.is_alive() for t in workers):
            if ctx.stop_requested():
                self.halt.set()
            elif pause_file is not None and pause_file.exists():
                with self.cond:
                    self.pausing = True
                    while self.busy > 0 and not self.halt.is_set() and any(t.is_alive() for t in workers):
                        self.cond.wait(0.2)
                # every thread is parked with no transaction open: acknowledge and wait
                if not ctx.checkpoint():
                    self.halt.set()
                with self.cond:
                    self.pausing = False
                    self.cond.notify_all()
            for t in workers:
                t.join(timeout=0.2)
        for t in workers:
            t.join()

    def _worker(self, next_item, work, connect, describe) -> None:
        conn = None
        try:
            conn = connect()
            while self._enter():
                try:
                    if self.stopping():
                        return
                    item = next_item(conn)
                    if item is None:
                        return
                    try:
                        work(item, conn)
                    except Stopped:
                        self.halt.set()
                        return
                    except QuotaExhausted as exc:
                        self.quota = exc
                        self.halt.set()
                        return
                    except AuthError as exc:
                        self.fatal = exc
                        self.halt.set()
                        return
                    except (RequestFailed, ClientError, EtsyError) as exc:
                        self._failed(item, describe, str(exc))
                    except Exception as exc:  # a bug or a DB error: that item fails, the rest go on
                        self.ctx.log.error("%s: %s\n%s", describe(item), exc, traceback.format_exc())
                        self._failed(item, describe, f"{type(exc).__name__}: {exc}")
                finally:
                    self._leave()
        except BaseException as exc:  # cannot even connect
            self.fatal = exc
            self.halt.set()
        finally:
            if conn is not None:
                conn.close()

    def _failed(self, item, describe, reason: str) -> None:
        text = f"{describe(item)}: {reason}"
        self.ctx.log.error("failed %s", text)
        with self.cond:
            self.failures.append(text)
        self.ctx.progress(1, counter="failed_items")
