"""BUTD region features of your own images, for X-Dim and ESL-region (plain PyTorch, no torchvision).

    python tools/extract_regions.py --detector detectors/frcnn-vg --images photos/ --out photos.npy
    python tools/extract_regions.py --detector DIR --images list.txt --out feats.npy --protocol lxmert --regions 10
    torchrun --standalone --nproc_per_node 4 tools/extract_regions.py --detector DIR --images photos/ --out photos.npy

--detector: a folder with config.yaml and pytorch_model.bin (unc-nlp/frcnn-vg-finetuned), or that hub
name once it is in the HuggingFace cache. --images: a folder (its image files, sorted by name) or a
text file of paths, one a line. Writes FEATS.npy (N x R x 2048 float32, the `{split}_ims.npy` layout
of test.py), FEATS_boxes.npy (N x R x 4: x1 y1 x2 y2 in the upright original's pixels) and FEATS.json
(image names in row order, sizes, skipped images, the detector's content hash, the options).
--protocol butd (default) is the Caffe extraction that made SCAN's features; lxmert is LXMERT's
reference extractor (docs/MODELS.md). A stopped run (any signal) continues with --resume.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from config.parsers import Parser  # noqa: E402
from errors import ConfigError  # noqa: E402
from outputs.folders import FolderLock, Outputs  # noqa: E402



def build_parser() -> Parser:
    parser = Parser(description=__doc__)
    parser.add_argument("--detector", required=True, help="folder with config.yaml + pytorch_model.bin, or a cached "
                                                          "hub name (unc-nlp/frcnn-vg-finetuned)")
    parser.add_argument("--images", required=True, help="folder of images, or a text file of paths (one a line)")
    parser.add_argument("--out", required=True, help="FEATS.npy; FEATS_boxes.npy and FEATS.json are written beside it")
    parser.add_argument("--protocol", default="butd", choices=("butd", "lxmert"),
                        help="butd: the Caffe extraction of SCAN's features; lxmert: LXMERT's extractor")
    parser.add_argument("--regions", type=int, default=36, help="regions per image (R)")
    parser.add_argument("--batch_size", type=int, default=4,
                        help="images decoded and flushed together (never changes a result)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2, help="processes decoding images (0: in the main one)")
    parser.add_argument("--resume", action="store_true", help="continue a stopped extraction into --out")
    parser.add_argument("--overwrite", action="store_true", help="replace --out (and a stopped extraction's work)")
    return parser


MAX_BATCH = 4096      # images held decoded at once: more only costs memory


def max_workers() -> int:
    """The project's bound on decoding processes (a typo such as 100000 would fork until the system chokes)."""
    return max(64, 8 * (os.cpu_count() or 1))


def check_regions(regions: int, protocol: str, cfg) -> None:
    """--regions beyond what the protocol can produce is padding only, and a huge one would size a
    FEATS.npy of terabytes: refused before any work."""
    from detector.protocols import BUTD
    most, source = ((BUTD.post_nms, "the BUTD protocol's TEST.RPN_POST_NMS_TOP_N") if protocol == "butd" else
                    (cfg.rpn_post_nms_topk, "RPN.POST_NMS_TOPK_TEST of the detector's config.yaml"))
    if regions > most:
        raise ConfigError(f"--regions {regions}: --protocol {protocol} gives at most {most} regions an image "
                          f"({source})")


def plan_outputs(args) -> tuple:
    """Every check that needs no model (options, outputs, the work folder): (output paths, Outputs)."""
    from detector.extraction import output_paths

    for option, least, most in (("regions", 1, None), ("batch_size", 1, MAX_BATCH), ("workers", 0, max_workers())):
        value = getattr(args, option)
        if value < least:
            raise ConfigError(f"--{option} must be at least {least} (got {value})")
        if most is not None and value > most:
            raise ConfigError(f"--{option} must be at most {most} (got {value})")
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a stopped extraction, --overwrite starts again: give one of them")
    outputs = Outputs(args.overwrite or args.resume, "extract_regions.py")
    outputs.file(args.out, "--out", ".npy", side=("_boxes.npy", ".json"))
    if os.path.isfile(args.images):
        outputs.reads(args.images, "--images")
    outputs.check()
    paths = output_paths(args.out)
    if args.resume:
        if not os.path.isdir(paths["work"]):
            done = os.path.isfile(paths["json"])
            raise ConfigError(f"--resume: there is no stopped extraction into {args.out} ({paths['work']} does not "
                              f"exist){'; it is complete already' if done else ''}")
        for target in ("features", "boxes", "json"):
            if os.path.exists(paths[target]):
                raise ConfigError(f"--resume: {paths[target]} exists already beside a stopped extraction; remove "
                                  "it, or start again with --overwrite")
    elif os.path.isdir(paths["work"]) and not args.overwrite:
        FolderLock(paths["work"], "--out").acquire().release()     # one being written: says by whom
        raise ConfigError(f"{paths['work']} holds a stopped extraction into {args.out}; continue it with --resume, "
                          "or start again with --overwrite")
    return paths, outputs


def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    paths, outputs = plan_outputs(args)

    from devices import distributed, resolve_device
    from detector.extraction import FORMAT, VERSION, Extraction, StopRequest, images_sha
    from detector.images import list_images
    from detector.config import CONFIG_NAME, read_config
    from detector.model import load_detector, resolve_detector
    from provenance import file_sha256

    folder = resolve_detector(args.detector)
    check_regions(args.regions, args.protocol, read_config(os.path.join(folder, CONFIG_NAME)))
    images = list_images(args.images)
    device = resolve_device(args.device)
    distributed.init_from_environment(device)
    model, cfg = load_detector(folder, device)
    weights_sha = file_sha256(os.path.join(folder, "pytorch_model.bin"))
    width = cfg.res2_out_channels * 8
    plan = {"images": len(images), "images_sha256": images_sha(images), "detector_sha256": weights_sha,
            "protocol": args.protocol, "regions": args.regions, "width": width}
    job = Extraction(args.out, images, plan, args.regions, width)
    lock = None
    if distributed.is_main_process():
        try:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot create its folder ({exc.strerror or exc})") from exc
        outputs.claim()     # the three outputs are ours from now on: a later --overwrite may replace them
        try:
            lock = FolderLock(paths["work"], "--out").acquire()     # before anything in it is read or removed
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot create its work folder {paths['work']} "
                              f"({exc.strerror or exc})") from exc
        try:
            if args.resume:
                job.check_resumable()
            else:
                job.clear()
                job.create()
        except BaseException:
            lock.release(undo=not args.resume)
            raise
    distributed.barrier()
    started = time.perf_counter()
    try:
        result = job.run(model, args.protocol, args.batch_size, args.workers)
        distributed.barrier()
        if not distributed.is_main_process():
            return None
        record = {"format": FORMAT, "version": VERSION, "protocol": args.protocol, "regions": args.regions,
                  "width": width,
                  "detector": {"source": args.detector, "folder": os.path.abspath(folder), "sha256": weights_sha,
                               "config_sha256": file_sha256(os.path.join(folder, "config.yaml"))},
                  "options": {"protocol": args.protocol, "regions": args.regions, "batch_size": args.batch_size,
                              "device": str(device), "workers": args.workers,
                              "processes": distributed.world_size()}}
        with StopRequest("writing the outputs first"):      # a signal now would leave them half renamed
            record = job.finish(record, args.overwrite or args.resume)
    finally:
        if lock is not None:
            lock.release()
    seconds = time.perf_counter() - started
    skipped = len(record["skipped"])
    print(f"extracted {len(record['images'])} images ({args.protocol}, {args.regions} regions) -> {args.out}, "
          f"{paths['boxes']}, {paths['json']}" + (f"; {skipped} skipped (listed in {paths['json']})" if skipped else "")
          + f"; {result['images'] / max(seconds, 1e-9):.2f} images/s")
    return record


if __name__ == "__main__":
    sys.exit(run_guarded(main))
