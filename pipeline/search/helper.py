"""The search helper process (issue 18): a child of the console that holds the search engine,
the models and the background remover, so the console process never imports torch. It reads
one JSON request a line on stdin and writes JSON lines on stdout; pipeline/search/
helper_client.py starts it, talks to it and stops it.

    -> {"id": 1, "op": "search", "request": {SearchRequest as JSON}}
    <- {"id": 1, "progress": "loading the models"}            (zero or more)
    <- {"id": 1, "ok": true, "outcome": {...}, "took_s": 0.4, "text_cached": false}
    <- {"id": 1, "ok": false, "error": "listing 5 is not in the index"}
    -> {"id": 2, "op": "stats"}   <- {"id": 2, "ok": true, "pid": ..., "modules": [...]}

It exits on end of input (its parent is gone or closed the pipe) and after ``--idle-s``
seconds without a request. Run as: python -m pipeline.search.helper --root R."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import queue
import sys
import threading
import time
from collections import OrderedDict

from pipeline.core.errors import UserError

HEAVY = ("torch", "open_clip", "transformers", "faiss", "rembg", "onnxruntime")


class TextCache:
    """A model set whose text towers remember the vectors of the last ``size`` texts: the same
    text typed again costs no encode."""

    def __init__(self, model_set, size: int):
        self.model_set = model_set
        self.size = max(0, int(size))
        self.vectors: OrderedDict = OrderedDict()
        self.hits = 0

    def get(self, name: str):
        return _CachedTower(self, name, self.model_set.get(name))

    def __getattr__(self, name):
        return getattr(self.model_set, name)


class _CachedTower:
    def __init__(self, cache: TextCache, name: str, model):
        self._cache, self._name, self._model = cache, name, model

    def embed_texts(self, texts):
        import numpy as np

        cache, out = self._cache, []
        for text in texts:
            key = (self._name, text)
            if key in cache.vectors:
                cache.vectors.move_to_end(key)
                cache.hits += 1
            else:
                cache.vectors[key] = np.asarray(self._model.embed_texts([text])[0])
                while len(cache.vectors) > cache.size:
                    cache.vectors.popitem(last=False)
            out.append(cache.vectors.get(key, None))
            if out[-1] is None:   # a cache of size 0
                out[-1] = np.asarray(self._model.embed_texts([text])[0])
        return np.stack(out)

    def __getattr__(self, name):
        return getattr(self._model, name)


class Helper:
    """What stays loaded between requests: the engine, the models, the remover, the listing
    table of the filters."""

    def __init__(self, root, locate=None, text_cache: int = 64, say=None):
        self.root = root
        self.locate = locate
        self.text_cache_size = text_cache
        self.say = say or (lambda rid, text: None)
        self.engine = None
        self.models = None
        self.remover = None
        self.table = None

    def search(self, rid, request: dict) -> dict:
        from pipeline.search.helper_query import request_from_json
        from pipeline.search.query import run

        req = request_from_json(request)
        req.check()
        if self.engine is None:
            from pipeline.index.shard import list_shard_numbers

            base = self.root.embeddings_dir
            if not list_shard_numbers(base):   # said before any model library loads
                raise UserError(f"the index store {base} is empty: nothing to search yet")
            self.say(rid, "opening the index")
            if req.kind != "same_as":
                from pipeline.models.loading import import_model_libraries

                import_model_libraries()   # before faiss (macOS), as query.run does
            from pipeline.search.engine import SearchEngine

            self.engine = SearchEngine.for_root(self.root)
        needs_models = req.kind in ("text", "image", "text+image") or (
            req.kind == "listing" and not self.engine.rows_of_listing(req.listing, req.image_id))
        if needs_models and self.models is None:
            self.say(rid, "loading the models (the first search of the helper)")
            from pipeline.search.encoders import load_model_set

            self.models = TextCache(load_model_set(self.root), self.text_cache_size)
        if req.has_images and self.remover is None:
            from pipeline.search.encoders import load_remover

            self.remover = load_remover(self.root)
        self.say(rid, "searching")
        hits_before = self.models.hits if self.models else 0
        got = run(self.root, req, engine=self.engine, model_set=self.models,
                  remover=self.remover, locate=self.locate, table=self.table)
        self.table = got.table
        return {"outcome": {"kind": got.kind, "results": got.results, "groups": got.groups,
                            "warnings": got.warnings, "notes": got.notes},
                "text_cached": bool(self.models and self.models.hits > hits_before)}

    def stats(self) -> dict:
        return {"pid": os.getpid(),
                "modules": sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY)),
                "texts_cached": len(self.models.vectors) if self.models else 0}


def resolve(spec: str | None):
    """``module:function`` -> the function (the caller names the image locator: search
    imports no stage)."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def serve(helper: Helper, lines: "queue.Queue", send, idle_s: float) -> str:
    """Answer requests until end of input or ``idle_s`` without one; returns why it stopped."""
    while True:
        try:
            line = lines.get(timeout=idle_s if idle_s > 0 else None)
        except queue.Empty:
            return "idle"
        if line is None:
            return "end of input"
        try:
            msg = json.loads(line)
        except ValueError:
            send({"id": None, "ok": False, "error": f"not a JSON request: {line[:80]!r}"})
            continue
        rid, op = msg.get("id"), msg.get("op")
        started = time.monotonic()
        try:
            if op == "search":
                answer = helper.search(rid, msg.get("request") or {})
            elif op == "stats":
                answer = helper.stats()
            else:
                raise UserError(f"unknown op {op!r} (search, stats)")
            send({"id": rid, "ok": True, **answer, "took_s": round(time.monotonic() - started, 4)})
        except UserError as exc:
            send({"id": rid, "ok": False, "error": str(exc)})
        except Exception as exc:  # one bad request must not end the helper
            send({"id": rid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search.helper")
    parser.add_argument("--root", required=True)
    parser.add_argument("--idle-s", type=float, default=600.0)
    parser.add_argument("--text-cache", type=int, default=64)
    parser.add_argument("--locate", default=None, help="module:function of the image locator")
    args = parser.parse_args(argv)
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    wire = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    write_lock = threading.Lock()

    def send(obj: dict) -> None:
        with write_lock:
            wire.write(json.dumps(obj, default=str) + "\n")
            wire.flush()

    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                lines.put(line)
        lines.put(None)

    threading.Thread(target=read, name="helper-stdin", daemon=True).start()
    from pipeline.core.root import Root

    helper = Helper(Root(args.root), resolve(args.locate), args.text_cache,
                    say=lambda rid, text: send({"id": rid, "progress": text}))
    send({"ready": True, "pid": os.getpid()})
    why = serve(helper, lines, send, args.idle_s)
    print(f"search helper {os.getpid()}: stopping ({why})", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)   # no slow interpreter teardown of the model libraries: nothing is left to write
