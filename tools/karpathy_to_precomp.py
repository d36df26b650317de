"""A Karpathy split of raw images as precomputed regions for test.py / train.py (`--data_path`).

    python tools/karpathy_to_precomp.py --dataset f30k --ann_path dataset_flickr30k.json \
        --image_root flickr30k-images --split test --detector detectors/frcnn-vg --out_dir data/f30k/f30k_precomp

writes OUT_DIR/{name}_ims.npy (N x R x 2048, with _boxes.npy and .json beside it, by
tools/extract_regions.py), OUT_DIR/{name}_caps.txt (the first 5 captions of each image, in row
order, as the released loaders normalise them) and OUT_DIR/{name}_images.txt (the image list
extracted). {name} is the split's name in SCAN's layout: Karpathy's `val` becomes `dev`. An image
the extractor skips (unreadable) is left out of both files, so rows and captions stay aligned.
Every check (the detector, the split, each output) is made before anything is written, and every
file written is recorded in OUT_DIR's manifest, so that --overwrite may replace it later.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.logs import setup_logging  # noqa: E402
from config.parsers import Parser  # noqa: E402
from detector import command  # noqa: E402
from errors import DataError  # noqa: E402
from outputs.folders import Outputs  # noqa: E402
from tools import extract_regions  # noqa: E402

CAPTIONS = 5
PROGRAM = "karpathy_to_precomp.py"      # the writer of the listing and the captions, in the manifest


def main(argv=None):
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=("f30k", "coco"))
    parser.add_argument("--ann_path", required=True, help="dataset_flickr30k.json, or the folder of the COCO files")
    parser.add_argument("--image_root", required=True)
    parser.add_argument("--split", required=True, help="train, val / dev, test, testall")
    parser.add_argument("--name", help="the split's file name in OUT_DIR (default: the split; val -> dev)")
    parser.add_argument("--detector", required=True)
    parser.add_argument("--out_dir", required=True, help="e.g. data/f30k/f30k_precomp")
    parser.add_argument("--protocol", default="butd", choices=("butd", "lxmert"))
    parser.add_argument("--regions", type=int, default=36)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    name = args.name or ("dev" if args.split == "val" else args.split)
    listing = os.path.join(args.out_dir, f"{name}_images.txt")
    captions_file = os.path.join(args.out_dir, f"{name}_caps.txt")
    features = os.path.join(args.out_dir, f"{name}_ims.npy")
    extract_args = extract_regions.build_parser().parse_args(
        ["--detector", args.detector, "--images", listing, "--out", features, "--protocol", args.protocol,
         "--regions", str(args.regions), "--batch_size", str(args.batch_size), "--device", args.device,
         "--workers", str(args.workers)] + (["--resume"] if args.resume else []) +
        (["--overwrite"] if args.overwrite else []))
    # every check before anything is written: the listing and the captions (ours), the features
    # and the detector (the extractor's), the split
    outputs = Outputs(args.overwrite or args.resume, PROGRAM)
    outputs.file(listing, "--out_dir", "_images.txt")
    outputs.file(captions_file, "--out_dir", "_caps.txt")
    if os.path.isfile(args.ann_path):
        outputs.reads(args.ann_path, "--ann_path")
    outputs.check()
    checked = command.check(extract_args)
    # torch, which the datasets package imports: only once the command line holds
    from datasets.karpathy import load_karpathy_split

    entries = load_karpathy_split(args.dataset, args.ann_path, args.image_root, args.split)
    short = [path for path, captions in entries if len(captions) < CAPTIONS]
    if short:
        raise DataError(f"{args.ann_path}: {len(short)} images of split {args.split} have fewer than {CAPTIONS} "
                        f"captions (the first: {short[0]}); the precomputed layout needs {CAPTIONS} per image")
    missing = [path for path, _ in entries if not os.path.exists(path)]
    if missing:     # a wrong --image_root or an incomplete copy: before any work, not skips
        raise DataError(f"--image_root {args.image_root}: {len(missing)} of the {len(entries)} images of split "
                        f"{args.split} do not exist (the first: {missing[0]}); give the folder that holds them")
    images = [(os.path.abspath(path), os.path.abspath(path)) for path, _ in entries]
    setup_logging()
    record = command.extract(extract_args, images, checked)
    by_path = {os.path.abspath(path): captions for path, captions in entries}
    lines = [caption for image in record["images"] for caption in by_path[image["path"]][:CAPTIONS]]
    outputs.check()     # again: nothing put there during the extraction is replaced
    outputs.claim()
    for path, text in ((listing, "".join(path + "\n" for path, _ in images)),
                       (captions_file, "".join(line + "\n" for line in lines))):
        partial = f"{path}.tmp-{os.getpid()}"
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(partial, path)
    print(f"{len(record['images'])} images of split {args.split} -> {features} and {captions_file} (the image list: "
          f"{listing})" + (f"; {len(record['skipped'])} skipped, left out of both" if record["skipped"] else ""))
    return record

if __name__ == "__main__":
    sys.exit(run_guarded(main))
