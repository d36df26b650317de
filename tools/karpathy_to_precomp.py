"""A Karpathy split of raw images as precomputed regions for test.py / train.py (`--data_path`).

    python tools/karpathy_to_precomp.py --dataset f30k --ann_path dataset_flickr30k.json \
        --image_root flickr30k-images --split test --detector detectors/frcnn-vg --out_dir data/f30k/f30k_precomp

writes OUT_DIR/{name}_ims.npy (N x R x 2048, with _boxes.npy and .json beside it, by
tools/extract_regions.py), OUT_DIR/{name}_caps.txt (the first 5 captions of each image, in row
order, as the released loaders normalise them) and OUT_DIR/{name}_images.txt (the image list
extracted). {name} is the split's name in SCAN's layout: Karpathy's `val` becomes `dev`. An image
the extractor skips (unreadable) is left out of both files, so rows and captions stay aligned.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from config.parsers import Parser  # noqa: E402
from errors import DataError  # noqa: E402
from outputs.folders import Outputs  # noqa: E402
from tools import extract_regions  # noqa: E402

CAPTIONS = 5


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
    # torch, which the datasets package imports: only once the command line holds
    from datasets.karpathy import load_karpathy_split

    name = args.name or ("dev" if args.split == "val" else args.split)
    entries = load_karpathy_split(args.dataset, args.ann_path, args.image_root, args.split)
    short = [path for path, captions in entries if len(captions) < CAPTIONS]
    if short:
        raise DataError(f"{args.ann_path}: {len(short)} images of split {args.split} have fewer than {CAPTIONS} "
                        f"captions (the first: {short[0]}); the precomputed layout needs {CAPTIONS} per image")
    listing = os.path.join(args.out_dir, f"{name}_images.txt")
    captions_file = os.path.join(args.out_dir, f"{name}_caps.txt")
    features = os.path.join(args.out_dir, f"{name}_ims.npy")
    outputs = Outputs(args.overwrite or args.resume)
    outputs.file(captions_file, "--out_dir", "_caps.txt")
    outputs.check()
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.resume:
        with open(listing, "w", encoding="utf-8") as handle:
            handle.write("".join(os.path.abspath(path) + "\n" for path, _ in entries))
    argv = ["--detector", args.detector, "--images", listing, "--out", features, "--protocol", args.protocol,
            "--regions", str(args.regions), "--batch_size", str(args.batch_size), "--device", args.device,
            "--workers", str(args.workers)] + (["--resume"] if args.resume else []) + \
        (["--overwrite"] if args.overwrite else [])
    record = extract_regions.main(argv)
    by_path = {os.path.abspath(path): captions for path, captions in entries}
    lines = [caption for image in record["images"] for caption in by_path[image["path"]][:CAPTIONS]]
    partial = f"{captions_file}.tmp-{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    os.replace(partial, captions_file)
    print(f"{len(record['images'])} images of split {args.split} -> {features} and {captions_file}"
          + (f" ({len(record['skipped'])} skipped, left out of both)" if record["skipped"] else ""))
    return record


if __name__ == "__main__":
    sys.exit(run_guarded(main))
