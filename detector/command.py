"""The region extraction of a list or folder of images as a command: its options, the checks made
before any work, and the run into FEATS.npy / FEATS_boxes.npy / FEATS.json. tools/extract_regions.py
is its command line; `retrieve.py index --images DIR --detector DET` runs it too.

The imports of torch and the detector's model wait until the options and outputs are checked.
"""

import os
import time

from config.parsers import Parser
from errors import ConfigError
from outputs.folders import FolderLock, Outputs
from provenance import file_sha256
from .config import CONFIG_NAME, read_config

PROGRAM = "extract_regions.py"      # the writer of the outputs, in their folder's manifest
MAX_BATCH = 4096      # images held decoded at once: more only costs memory


def build_parser(description: str | None = None) -> Parser:
    parser = Parser(description=description)
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


def max_workers() -> int:
    """The project's bound on decoding processes (a typo such as 100000 would fork until the system chokes)."""
    return max(64, 8 * (os.cpu_count() or 1))


def check_regions(regions: int, protocol: str, cfg) -> None:
    """--regions beyond what the protocol can produce is padding only, and a huge one would size a
    FEATS.npy of terabytes: refused before any work."""
    from .protocols import BUTD     # imports torch: only once the command line holds
    most, source = ((BUTD.post_nms, "the BUTD protocol's TEST.RPN_POST_NMS_TOP_N") if protocol == "butd" else
                    (cfg.rpn_post_nms_topk, "RPN.POST_NMS_TOPK_TEST of the detector's config.yaml"))
    if regions > most:
        raise ConfigError(f"--regions {regions}: --protocol {protocol} gives at most {most} regions an image "
                          f"({source})")


def plan_outputs(args) -> tuple:
    """Every check that needs no model (options, outputs, the work folder): (output paths, the
    checked Outputs of the three outputs)."""
    from .extraction import output_paths     # imports torch: only once the command line holds

    for option, least, most in (("regions", 1, None), ("batch_size", 1, MAX_BATCH), ("workers", 0, max_workers())):
        value = getattr(args, option)
        if value < least:
            raise ConfigError(f"--{option} must be at least {least} (got {value})")
        if most is not None and value > most:
            raise ConfigError(f"--{option} must be at most {most} (got {value})")
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues a stopped extraction, --overwrite starts again: give one of them")
    outputs = Outputs(args.overwrite or args.resume, PROGRAM)
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


def check(args) -> tuple:
    """Every check made before any work that needs neither the image list nor the model: the
    options, outputs and work folder (`plan_outputs`), the detector's folder and config, --regions.
    (output paths, the checked Outputs, the detector's folder), for `extract`."""
    paths, outputs = plan_outputs(args)
    from .model import resolve_detector     # imports torch: only once the options and outputs are checked
    folder = resolve_detector(args.detector)
    check_regions(args.regions, args.protocol, read_config(os.path.join(folder, CONFIG_NAME)))
    return paths, outputs, folder


def extract(args, images: list | None = None, checked: tuple | None = None) -> dict | None:
    """Extract the regions of args.images with args.detector into args.out (the options of
    `build_parser`); the record written as FEATS.json, or None on the ranks other than the main one
    under torchrun. `images`: the (name, path) list to extract instead of reading args.images (a
    caller that lists them itself); `checked`: what `check(args)` returned, when the caller made
    the checks first."""
    paths, outputs, folder = checked or check(args)

    # torch and the detector: only now that the options and outputs are checked
    from devices import distributed, resolve_device
    from .extraction import FORMAT, VERSION, Extraction, StopRequest, images_sha
    from .images import list_images
    from .model import load_detector

    images = list_images(args.images) if images is None else images
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
