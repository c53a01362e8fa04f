"""Background removal alone with a u2net-size model at random init (rembg's u2net.onnx is not
on this machine and is never downloaded): the U^2-Net of bench/u2net_arch.py exported to
ONNX under a temporary $U2NET_HOME and run by rembg's ``u2net_custom`` session through the
project's pipeline/models/bgremove.py, so the compute (and rembg's pre/post-processing) is the
real model's. Prints ms per image: the median of ``--images`` after a warm-up.

    .venv/bin/python bench/bench_bgremove.py --images 6

bench/bench_worker.py --u2net-random uses ``random_u2net_settings`` for the whole worker.
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not os.environ.get("U2NET_HOME"):
    os.environ["U2NET_HOME"] = tempfile.mkdtemp(prefix="bench-u2net-")
    atexit.register(shutil.rmtree, os.environ["U2NET_HOME"], True)  # 176 MB each

RANDOM_U2NET_NAME = "imageselector-bench-u2net-random.onnx"


def random_u2net_settings(threads: int = 0, verbose: bool = True):
    """BgSettings for rembg's u2net_custom with the random-init U^2-Net under $U2NET_HOME
    (exported once per U2NET_HOME)."""
    from pipeline.models.bgremove import BgSettings
    from pipeline.models.testprofile import u2net_home

    path = u2net_home() / RANDOM_U2NET_NAME
    if not path.is_file():
        import u2net_arch

        t = time.perf_counter()
        params, size = u2net_arch.export(path)
        if verbose:
            print(f"u2net-size model: {params:,} parameters, {size:,} bytes ({size / 1e6:.1f} MB; "
                  f"rembg's u2net.onnx ~{u2net_arch.REAL_U2NET_MB} MB, "
                  f"{u2net_arch.REAL_U2NET_PARAMS_M}M parameters), exported in "
                  f"{time.perf_counter() - t:.1f} s to {path}")
    return BgSettings(model="u2net_custom", model_path=str(path), threads=threads)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0,
                    help="onnxruntime intra-op threads (models.bg_threads); 0 = its default")
    args = ap.parse_args()

    import onnxruntime
    from PIL import Image

    from bench_worker import sample_images
    from pipeline.models.bgremove import BackgroundRemover

    print(f"onnxruntime {onnxruntime.__version__}, cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}, images {args.images} (570x456 JPEG)")
    remover = BackgroundRemover(random_u2net_settings(args.threads))
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in sample_images(args.images)]
    t = time.perf_counter()
    remover.remove(pil[0])  # session start-up and the first run are not part of the figure
    print(f"session start + first image: {(time.perf_counter() - t) * 1000:.0f} ms, providers "
          f"{remover.session.inner_session.get_providers()}")
    times = []
    for im in pil:
        t = time.perf_counter()
        remover.remove_to_jpeg(im)  # what the worker does: cut-out on white, JPEG q90
        times.append((time.perf_counter() - t) * 1000)
    print("per image ms: " + ", ".join(f"{x:.0f}" for x in times))
    print(f"bg removal (u2net-size, random init): median {statistics.median(times):.0f} ms/image, "
          f"min {min(times):.0f}, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
