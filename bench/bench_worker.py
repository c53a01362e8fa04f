"""Benchmark of the embedding worker: ms per image of background removal alone and of each
model alone, images/s of the whole worker pipeline, and bf16 autocast against fp32.

    .venv/bin/python bench/bench_worker.py --profile test --images 32
    .venv/bin/python bench/bench_worker.py --profile random --images 8 --bf16
    .venv/bin/python bench/bench_worker.py --profile random --images 8 --u2net-random

``--profile random`` builds the full-size architectures at random init (same compute as the
real weights, no download). Background removal uses rembg's u2net when u2net.onnx is in
$U2NET_HOME; with ``--u2net-random`` a u2net-size U^2-Net at random init (bench/u2net_arch.py,
same compute as u2net.onnx); else the tiny test model (then its figure is not u2net's).
Prints its figures; never run as a test.
"""
from __future__ import annotations

import argparse
import atexit
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not os.environ.get("U2NET_HOME"):
    os.environ["U2NET_HOME"] = tempfile.mkdtemp(prefix="bench-u2net-")
    atexit.register(shutil.rmtree, os.environ["U2NET_HOME"], True)


def sample_images(n: int, size=(570, 456)):
    """Etsy-sized pictures: a light room with a dark piece of furniture."""
    import random

    from PIL import Image, ImageDraw

    out = []
    for i in range(n):
        rng = random.Random(i)
        im = Image.new("RGB", size, tuple(rng.randrange(200, 250) for _ in range(3)))
        d = ImageDraw.Draw(im)
        x0, y0 = rng.randrange(0, size[0] // 2), rng.randrange(0, size[1] // 2)
        d.rectangle([x0, y0, x0 + size[0] // 3, y0 + size[1] // 3],
                    fill=tuple(rng.randrange(20, 140) for _ in range(3)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class _MemStore:
    def __init__(self):
        self.images = {}

    def add_image(self, row, jpeg):
        self.images[row.key] = jpeg

    def read_image(self, row):
        return self.images[row.key]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", choices=["test", "random"], default="test")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast, cosine vs fp32")
    ap.add_argument("--skip-worker", action="store_true")
    ap.add_argument("--u2net-random", action="store_true",
                    help="bg removal with a u2net-size U^2-Net at random init (rembg u2net_custom)")
    ap.add_argument("--bg-threads", default="0",
                    help="onnxruntime intra-op threads in the whole worker (models.bg_threads), "
                         "a comma list runs the worker once per value; 0 = its default; "
                         "bg removal alone is always timed with the default")
    ap.add_argument("--prep-threads", default="2",
                    help="the worker's preparation threads (worker.prep_threads), a comma list "
                         "runs the worker once per value (and per --bg-threads value)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from pipeline.models import testprofile as testmodels
    from pipeline.batches.batchfile import ManifestRow
    from pipeline.models.bgremove import BackgroundRemover, BgSettings
    from pipeline.models.embed import Embedder, Job
    from pipeline.models.loading import ModelSet
    from pipeline.models.registry import MODEL_NAMES, ModelSettings

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"profile {args.profile}, images {args.images}, batch {args.batch}, "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.u2net_random:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_bgremove import random_u2net_settings

        bg = random_u2net_settings()
        bg_name = "u2net-size, random init"
    elif os.path.isfile(Path(os.environ["U2NET_HOME"]) / "u2net.onnx"):
        bg = BgSettings(model="u2net")
        bg_name = "u2net"
    else:
        bg = BgSettings(model="u2net_custom", model_path=str(testmodels.ensure_tiny_u2net()))
        bg_name = "tiny test model (u2net.onnx not present)"
    remover = BackgroundRemover(bg)
    raw = sample_images(args.images)
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in raw]
    remover.remove(pil[0])  # session start-up is not part of the figure
    fed, bg_times = [], []
    for im in pil:
        t = time.perf_counter()
        jpeg = remover.remove_to_jpeg(im)
        bg_times.append((time.perf_counter() - t) * 1000)
        fed.append(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    bg_ms = sum(bg_times) / len(bg_times)
    print(f"bg removal ({bg_name}): {bg_ms:.1f} ms/image mean, "
          f"{statistics.median(bg_times):.1f} median")

    texts = [f"Table {i}. oak" for i in range(args.images)]  # as the whole worker gets them
    text_ms: dict[str, float] = {}

    def time_models(precision: str):
        ms = ModelSet(ModelSettings(profile=args.profile, device="cpu", precision=precision))
        per, vecs = {}, {}
        for name in MODEL_NAMES:
            m = ms.get(name)
            pixels = [m.preprocess(im) for im in fed[: args.batch]]
            m.embed_pixels(torch.stack(pixels[:2]))  # warm-up
            t0 = time.perf_counter()
            pre = [m.preprocess(im) for im in fed]
            t1 = time.perf_counter()
            out = [m.embed_pixels(torch.stack(pre[i:i + args.batch]))
                   for i in range(0, len(pre), args.batch)]
            t2 = time.perf_counter()
            vecs[name] = np.concatenate(out)
            per[name] = ((t1 - t0) * 1000 / len(fed), (t2 - t1) * 1000 / len(fed))
            if m.spec.text and precision == "fp32":
                m.embed_texts(texts[:2])  # warm-up
                t3 = time.perf_counter()
                for i in range(0, len(texts), args.batch):
                    m.embed_texts(texts[i:i + args.batch])
                text_ms[m.spec.text_name] = (time.perf_counter() - t3) * 1000 / len(texts)
            ms.unload(name)
        return per, vecs

    per32, v32 = time_models("fp32")
    for name, (pre, inf) in per32.items():
        print(f"{name:<13} fp32: {inf:8.1f} ms/image inference, {pre:5.1f} ms/image preprocessing")
    for name, ms_per in text_ms.items():
        print(f"{name:<18} fp32: {ms_per:8.1f} ms/image (one distinct text per image)")
    image_ms = bg_ms + sum(p + i for p, i in per32.values())
    total_ms = image_ms + sum(text_ms.values())
    print(f"sum of steps: {total_ms:.1f} ms/image -> {1000 / total_ms:.3f} images/s "
          f"(without the text towers {image_ms:.1f} -> {1000 / image_ms:.3f}); "
          f"load average {os.getloadavg()[0]:.1f}")
    if args.bf16:
        per16, v16 = time_models("bf16")
        for name, (pre, inf) in per16.items():
            cos = np.sum(v32[name] * v16[name], axis=1)
            print(f"{name:<13} bf16: {inf:8.1f} ms/image ({per32[name][1] / inf:.2f}x fp32), "
                  f"cosine to fp32 min {cos.min():.4f} mean {cos.mean():.4f}")
    if args.skip_worker:
        return 0
    ms = ModelSet(ModelSettings(profile=args.profile, device="cpu"))
    for name in MODEL_NAMES:
        ms.get(name)  # loading is once per process, not per batch
    combos = [(int(p), int(b)) for p in args.prep_threads.split(",") for b in args.bg_threads.split(",")]
    for prep_threads, bg_threads in combos:
        remover = BackgroundRemover(replace(bg, threads=bg_threads))
        emb = Embedder(ms, remover, batch_size=args.batch, prep_threads=prep_threads,
                       prefetch=2 * args.batch)
        with tempfile.TemporaryDirectory() as tmp:
            jobs = []
            for i, data in enumerate(raw):
                p = Path(tmp) / f"{i}.jpg"
                p.write_bytes(data)
                jobs.append(Job(i, ManifestRow(1, i + 1, texts[i]), p))
            out = emb.run(jobs, texts, _MemStore())
        rate = len(out.ok) / out.wall_s
        print(f"whole worker, prep_threads {prep_threads}, bg_threads {bg_threads}: {rate:.3f} images/s "
              f"({out.wall_s:.1f} s for {len(out.ok)}), {rate * total_ms / 10:.0f}% of "
              f"1 / sum of steps (goal on a CPU: >= 90%; {rate * image_ms / 10:.0f}% without "
              f"the text towers), load average {os.getloadavg()[0]:.1f}")
        print("worker step thread-seconds per image: " + ", ".join(
            f"{k} {v * 1000 / max(1, len(out.ok)):.0f} ms" for k, v in out.seconds.items()))
    # The machine is shared: bg removal alone again, to see how far the load drifted.
    again = []
    for im in pil[:4]:
        t = time.perf_counter()
        BackgroundRemover(bg).remove_to_jpeg(im)
        again.append((time.perf_counter() - t) * 1000)
    print(f"bg removal alone again after the worker: {statistics.median(again):.1f} ms/image median")
    return 0


if __name__ == "__main__":
    sys.exit(main())
