"""Recall@K of the weighted mean of score matrices saved with `test.py --save_sims`.

    python tools/ensemble.py a.npy b.npy                      # one split (e.g. Flickr30K 1K test)
    python tools/ensemble.py a.npy b.npy --coco_5fold         # COCO testall: 5-fold 1K and 5K
    python tools/ensemble.py a.npy b.npy --weights 0.6 0.4 --save ens.npy

Each matrix is read with the .json test.py wrote next to it: the matrix must be the one the record
describes (its content hash), and all members must have been computed on the same split and data
(captions and images, in order); with --coco_5fold, on COCO's testall. A matrix without its record
is refused unless --unverified.
"""

import os
import sys


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from checkpoints.atomic import atomic_save_npy, write_json  # noqa: E402
from cli.guard import run_guarded  # noqa: E402
from config.parsers import Parser, add_schema_options  # noqa: E402
from errors import UserError  # noqa: E402
from evaluation.ensemble import RunningMean, ensemble_weights  # noqa: E402
from outputs.folders import Outputs  # noqa: E402
from provenance import array_sha256, check_same_data, read_matrix, record, side_record  # noqa: E402

COCO_SPLIT = "testall"      # the split --coco_5fold folds: COCO's 5,000 test images


def check_members(paths: list[str], unverified: bool, coco_5fold: bool = False) -> list[dict]:
    """Every member is a score matrix of the first one's shape whose record matches it, and all
    were computed on the same data (with `coco_5fold`, COCO's testall); read memory-mapped, so
    that no matrix is held."""
    records, shapes = [], RunningMean()
    for path in paths:
        sims = read_matrix(path, mmap=True)
        shapes.check(sims, path)
        if unverified:
            continue
        side, saved = side_record(path, ", or give --unverified")
        if saved.get("matrix_sha256") != array_sha256(sims):
            raise UserError(f"{path} is not the matrix {side} describes (its content differs); was it replaced?")
        split = (saved.get("data") or {}).get("split")
        if coco_5fold and split != COCO_SPLIT:
            said = f"says split {split!r}" if split else "records no split"
            raise UserError(f"--coco_5fold: {side} {said}; COCO's 5-fold 1K is defined on the {COCO_SPLIT!r} split's "
                            "5,000 images (testall.py --save_sims): drop --coco_5fold, or give matrices of testall")
        if records:
            check_same_data(records[0]["data"], saved["data"], paths[0], path)
        records.append(saved)
    return records


def main(argv=None) -> dict:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("matrices", nargs="+", help="score matrices (.npy) of the same split, same item order")
    add_schema_options(parser, parser, ("weights",), weights={"help": "one per matrix, normalised to sum 1 [equal]"})
    parser.add_argument("--coco_5fold", action="store_true", help="COCO testall: 5-fold 1K and full 5K")
    parser.add_argument("--save", default=None, help="write the ensemble matrix here (.npy, with its .json)")
    parser.add_argument("--overwrite", action="store_true", help="replace --save and its .json if they exist")
    parser.add_argument("--unverified", action="store_true",
                        help="accept matrices without their .json record (nothing is then checked but shapes)")
    args = parser.parse_args(argv)
    weights = ensemble_weights(args.weights, len(args.matrices), ("matrices", "matrix"))
    outputs = Outputs(args.overwrite, "ensemble.py")
    outputs.file(args.save, "--save", ".npy", side=(".json",))
    for path in args.matrices:
        outputs.reads(path, "matrix")
        outputs.reads(os.path.splitext(path)[0] + ".json", "record")
    outputs.check()
    # torch: only once the command line holds
    from datasets.layouts import CAPTIONS_PER_IMAGE
    from evaluation.protocol import protocol_report
    records = check_members(args.matrices, args.unverified, args.coco_5fold)
    mean = RunningMean()
    per_image = CAPTIONS_PER_IMAGE     # the benchmarks' 5, unless the records say otherwise
    if records and records[0]["data"]:
        per_image = records[0]["data"]["captions"] // max(1, records[0]["data"]["images"])
    for path, weight in zip(args.matrices, weights):
        sims = read_matrix(path)
        _, text = protocol_report(sims, args.coco_5fold, path, per_image)
        print(text)
        mean.add(sims, weight, path)
    report, text = protocol_report(mean.total, args.coco_5fold,
                                   f"ensemble of {len(weights)} (weights {' '.join(f'{w:.3g}' for w in weights)})", per_image)
    print(text)
    if args.save:
        provenance = record("scores", [identity for member in records for identity in member["checkpoints"]],
                            records[0]["data"] if records else None, weights=weights,
                            members=[{"matrix": path, "weight": weight, "provenance": member}
                                     for path, weight, member in zip(args.matrices, weights, records)],
                            protocol="coco_5fold" if args.coco_5fold else "single",
                            matrix_sha256=array_sha256(mean.total), verified=not args.unverified)
        outputs.claim()
        atomic_save_npy(mean.total, args.save, args.overwrite)
        write_json({"metrics": report, "provenance": provenance}, os.path.splitext(args.save)[0] + ".json",
                   args.overwrite)
    return report


if __name__ == "__main__":
    sys.exit(run_guarded(main))
