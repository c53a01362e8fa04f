"""The console's memory and quit time around an image search (issue 18), and the search
helper's start cost against a warm query.

Two variants, each a fresh console process (headless Textual app, 160x48) on the same root:
- ``inprocess``: the path the console had before the helper: pipeline.search.query.run in the
  console process with the engine, models and remover kept there (what console/adapters.py
  did), so torch and the models live in the console;
- ``helper``: the pane's path now: the query line to the search helper process
  (pipeline/search/helper.py), which holds the models.
Each prints the console's RSS after the first draw and after the searches, the helper's RSS,
the time of the first (cold) and second (warm) image search and of a text search typed twice
(the second from the helper's text cache), then the quit time (the parent writes "quit"
and times until the console process has exited, helper stop included).

    .venv/bin/python bench/bench_search_pane.py --root /tmp/isbench-pane --profile random
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CHILD = r"""
import asyncio, json, os, re, sys, threading, time
import psutil
from pipeline.core.root import Root
from console.app import ConsoleApp

mode, root, image, text = sys.argv[1], Root(sys.argv[2]), sys.argv[3], sys.argv[4]
me = psutil.Process()
mb = lambda p: round(p.memory_info().rss / 2**20, 1)
out = {"mode": mode}

def inprocess_search(state, line):
    # the old console path: query.run in this process, engine and models kept between queries
    from pipeline.search.helper_query import parse_query_text
    from pipeline.search.query import run
    from pipeline.stages.archive.primary import primary_location
    if "engine" not in state:
        from pipeline.models.loading import import_model_libraries
        import_model_libraries()
        from pipeline.search.encoders import load_model_set, load_remover
        from pipeline.search.engine import SearchEngine
        state.update(engine=SearchEngine.for_root(root), models=load_model_set(root),
                     remover=load_remover(root))
    req = parse_query_text(line, 24)
    return run(root, req, engine=state["engine"], model_set=state["models"],
               remover=state["remover"], locate=primary_location).results

async def main():
    app = ConsoleApp(root, image_class=None)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(1.0)
        out["console_mb_start"] = mb(me)
        pane = app.query_one("#search-pane")
        state = {}

        async def timed(line):
            t = time.perf_counter()
            if mode == "helper":
                await pilot.press("3")
                pane.field.value = line
                app.screen.set_focus(pane.field)
                seq = app._search_seq
                await pilot.press("enter")
                while app._search_seq == seq or pane.busy:
                    await pilot.pause(0.02)
                n = len(pane.cards())
                msg = str(pane.query_one("#search-message").content)
                if not n:
                    raise SystemExit(f"no results for {line!r}: {msg}")
                took = re.search(r" · ([0-9.]+) s", msg)   # the helper's own time
                out.setdefault("helper_took_s", []).append(float(took.group(1)) if took else None)
            else:
                box = {}
                th = threading.Thread(target=lambda: box.update(r=inprocess_search(state, line)))
                th.start()
                while th.is_alive():
                    await pilot.pause(0.02)
                n = len(box["r"])
            return round(time.perf_counter() - t, 3), n

        out["image_cold_s"], out["results"] = await timed(image)
        out["console_mb_after_image"] = mb(me)
        out["image_warm_s"], _ = await timed(image)
        out["text_first_s"], _ = await timed(text)
        out["text_again_s"], _ = await timed(text)
        out["console_mb_after_all"] = mb(me)
        helper = getattr(app, "_search_helper", None)
        if helper is not None and helper.pid:
            out["helper_mb"] = mb(psutil.Process(helper.pid))
        out["torch_in_console"] = "torch" in sys.modules
        print(json.dumps(out), flush=True)
        sys.stdin.readline()          # the parent times the quit from here
        app.exit()

asyncio.run(main())
"""


def build_root(path: Path, profile: str) -> tuple[str, str]:
    """A sandbox root whose index holds a small catalogue (synthetic vectors: the models'
    cost does not depend on what the index holds); returns (image path, text)."""
    from pipeline.core.root import Root
    from pipeline.sandbox.catalogue import Catalogue

    cat = Catalogue(listings=60, seed=7, similar_groups=6, group_size=3, epoch=1_700_000_000)
    image = path / "query.jpg"
    if not (path / "imageselector.toml").exists():
        import numpy as np

        from pipeline.models.registry import VECTOR_DIMS, VECTOR_ORDER
        from pipeline.search.calibrate import build_catalogue_index

        path.mkdir(parents=True, exist_ok=True)
        (path / "imageselector.toml").write_text(
            f'[root]\nprofile = "sandbox"\n[models]\nprofile = "{profile}"\n'
            '[console]\nthumbnails = "none"\n')
        root = Root(path).ensure()

        def vectors_for(keys):
            rng = np.random.default_rng(1)
            out = {}
            for m in VECTOR_ORDER:
                v = rng.standard_normal((len(keys), VECTOR_DIMS[m])).astype("float32")
                out[m] = v / np.linalg.norm(v, axis=1, keepdims=True)
            return out

        build_catalogue_index(root, cat, None, None, vectors_for=vectors_for)
        data, _ = cat.render(cat.image_id(0, 0), "570xN")
        image.write_bytes(data)
    return str(image), "walnut side table"


def run_variant(mode: str, root: Path, image: str, text: str) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(root), image, text],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise SystemExit(f"{mode}: the console process failed (exit {proc.returncode})")
    figures = json.loads(line)
    started = time.perf_counter()
    proc.stdin.write("quit\n")
    proc.stdin.flush()
    proc.wait()
    figures["quit_s"] = round(time.perf_counter() - started, 3)
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=Path("/tmp/isbench-pane"))
    parser.add_argument("--profile", default="random", choices=("random", "test"))
    parser.add_argument("--modes", default="inprocess,helper")
    args = parser.parse_args(argv)
    image, text = build_root(args.root, args.profile)
    rows = [run_variant(mode, args.root, image, text) for mode in args.modes.split(",")]
    keys = ["console_mb_start", "console_mb_after_image", "console_mb_after_all", "helper_mb",
            "torch_in_console", "image_cold_s", "image_warm_s", "text_first_s", "text_again_s",
            "helper_took_s", "quit_s", "results"]
    print(f"profile {args.profile}; root {args.root}")
    print(f"{'figure':<24}" + "".join(f"{r['mode']:>28}" for r in rows))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{str(r.get(key, '-')):>28}" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
