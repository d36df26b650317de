"""Region extraction speed: ours (detector/, --protocol lxmert) against the reference's algorithm
(tests/detector_reference.py: LXMERT's extractor in its own style, one image at a time, RoI pooling
as a loop per box and bin, NMS as a loop over kept boxes) on the same images, with random weights of the real network's sizes.

    python bench/bench_extract.py                                  # ResNet-101 C4, 1,600 classes
    python bench/bench_extract.py --min_size 800 --max_size 1333 --post_nms 300 --images 2   # the reference's sizes
    python bench/bench_extract.py --tiny                           # a tiny network (seconds)

Each measurement runs in a fresh process, so its peak resident memory (ru_maxrss) is its own. Ours
is measured at --batch_size 1 and 8 (images decoded and flushed together; the network sees one
image at a time, as a batch must not change a result); the reference runs one image at a time.
Ours is also timed by stage (backbone, RPN, RoI pooling, res5, box head + NMS).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from detector import model as model_module  # noqa: E402
from detector.images import list_images, read_rgb  # noqa: E402
from detector.model import load_detector  # noqa: E402
from detector.protocols import extract  # noqa: E402
from detector.testing import config_dict, full, write_detector  # noqa: E402


def make_images(folder: str, count: int, seed: int = 0) -> None:
    rng = np.random.RandomState(seed)
    sizes = [(375, 500), (500, 333), (480, 640), (427, 640)]
    os.makedirs(folder, exist_ok=True)
    for index in range(count):
        h, w = sizes[index % len(sizes)]
        base = rng.rand(h // 16 + 1, w // 16 + 1, 3) * 255
        pixels = np.kron(base, np.ones((16, 16, 1)))[:h, :w].astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{index:03d}.jpg"), quality=90)


def measure(kind: str, detector: str, images: str, regions: int, batch: int) -> dict:
    """In this process: seconds per image (after a first warm-up image) and stage times."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    listed = list_images(images)
    stages = {"backbone": 0.0, "rpn": 0.0, "roi_pool": 0.0, "res5": 0.0}
    if kind == "ours":
        model, _ = load_detector(detector)
        timed(model, "features", stages, "backbone")
        timed(model, "rpn", stages, "rpn")
        timed(model.roi_heads, "res5", stages, "res5", module=True)
        timed(model_module, "roi_max_pool", stages, "roi_pool")

        def run(rgbs):
            return [extract(model, rgb, regions, "lxmert") for rgb in rgbs]
    else:
        # the reference extractor is test code: only the reference's own process loads it
        from tests.detector_reference import nms_kept_loop, reference_extract
        state = torch.load(os.path.join(detector, "pytorch_model.bin"))
        cfg = yaml.safe_load(open(os.path.join(detector, "config.yaml")))

        def run(rgbs):
            return [reference_extract(state, cfg, rgb, regions, nms=nms_kept_loop) for rgb in rgbs]
    run([read_rgb(listed[0][1])])           # warm-up
    for key in stages:
        stages[key] = 0.0
    started = time.perf_counter()
    done = 0
    for first in range(0, len(listed), batch):
        rgbs = [read_rgb(path) for _, path in listed[first:first + batch]]
        run(rgbs)
        done += len(rgbs)
    seconds = time.perf_counter() - started
    return {"kind": kind, "batch": batch, "images": done, "seconds_per_image": seconds / done,
            "images_per_s": done / seconds, "stages": {k: v / done for k, v in stages.items()},
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def timed(owner, name, stages, stage, module=False):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        out = original(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stages[stage] += time.perf_counter() - started
        return out

    if module:              # an nn.Module attribute: wrap its forward
        original = owner.res5.forward
        owner.res5.forward = wrapper
    else:
        setattr(owner, name, wrapper)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--min_size", type=int, default=600)
    parser.add_argument("--max_size", type=int, default=1000)
    parser.add_argument("--post_nms", type=int, default=100)
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--skip_reference", action="store_true")
    parser.add_argument("--skip_ours", action="store_true")
    parser.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        kind, detector, images, regions, batch = args.measure
        print("RESULT " + json.dumps(measure(kind, detector, images, int(regions), int(batch))))
        return
    work = tempfile.mkdtemp(prefix="bench_extract_")
    try:
        report(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(args, work: str) -> None:
    sizes = dict(min_size=args.min_size, max_size=args.max_size, pre_nms=6000, post_nms=args.post_nms, min_det=10,
                 max_det=36)
    data = config_dict(**sizes) if args.tiny else full(**sizes)
    detector = write_detector(os.path.join(work, "detector"), data)
    images = os.path.join(work, "images")
    make_images(images, args.images + 1)
    rows = []
    runs = ([] if args.skip_ours else [("ours", 1), ("ours", 8)]) + ([] if args.skip_reference else [("reference", 1)])
    for kind, batch in runs:
        done = subprocess.run([sys.executable, __file__, "--measure", kind, detector, images, str(args.regions),
                               str(batch)], capture_output=True, text=True)
        line = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not line:
            print(done.stderr[-3000:])
            raise SystemExit(f"{kind} batch {batch} failed")
        rows.append(json.loads(line[0][7:]))
        print(json.dumps(rows[-1]))
    print(f"\n{'tiny' if args.tiny else 'ResNet-101 C4, 1,600 classes'}, short side {args.min_size} (max "
          f"{args.max_size}), {args.post_nms} proposals, {args.regions} regions, {args.images} images, "
          f"{os.environ.get('BENCH_THREADS', '2')} threads\n")
    print("| implementation | batch | images/s | s/image | peak RSS GB | backbone | RPN head | RoI pool | res5 | rest: anchors, NMS, heads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        st = row["stages"]
        known = sum(st.values())
        cells = [f"{st[k]:.2f}" for k in ("backbone", "rpn", "roi_pool", "res5")] if row["kind"] == "ours" else \
            ["-"] * 4
        rest = f"{row['seconds_per_image'] - known:.2f}" if row["kind"] == "ours" else "-"
        print(f"| {row['kind']} | {row['batch']} | {row['images_per_s']:.3f} | {row['seconds_per_image']:.2f} | "
              f"{row['peak_rss_gb']:.2f} | " + " | ".join(cells) + f" | {rest} |")


if __name__ == "__main__":
    main()
