"""Recall@K of the weighted mean of score matrices saved with `test.py --save_sims`.

    python tools/ensemble.py a.npy b.npy                      # one split (e.g. Flickr30K 1K test)
    python tools/ensemble.py a.npy b.npy --coco_5fold         # COCO testall: 5-fold 1K and 5K
    python tools/ensemble.py a.npy b.npy --weights 0.6 0.4 --save ens.npy
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.outputs import check_output_file  # noqa: E402
from errors import UserError  # noqa: E402
from evaluation.ensemble import RunningMean, ensemble_weights  # noqa: E402
from evaluation.protocol import protocol_report  # noqa: E402


def read_matrix(path: str) -> np.ndarray:
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder, not a saved score matrix (.npy)")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist")
    try:
        sims = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"{path} is not a readable .npy score matrix ({exc})") from exc
    if sims.ndim != 2 or sims.dtype.kind != "f":
        raise UserError(f"{path} holds a {sims.dtype} array of shape {sims.shape}, not an images x captions "
                        "score matrix")
    return sims


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("matrices", nargs="+", help="score matrices (.npy) of the same split, same item order")
    parser.add_argument("--weights", type=float, nargs="+", default=None, help="one per matrix [equal]")
    parser.add_argument("--coco_5fold", action="store_true", help="COCO testall: 5-fold 1K and full 5K")
    parser.add_argument("--save", default=None, help="write the ensemble matrix here (.npy)")
    args = parser.parse_args(argv)
    weights = ensemble_weights(args.weights, len(args.matrices))
    if args.save:
        check_output_file(args.save, "--save", ".npy")
    mean = RunningMean()
    for path, weight in zip(args.matrices, weights):
        sims = read_matrix(path)
        mean.check(sims, path)
        _, text = protocol_report(sims, args.coco_5fold, path)
        print(text)
        mean.add(sims, weight, path)
    report, text = protocol_report(mean.total, args.coco_5fold,
                                   f"ensemble of {len(weights)} (weights {' '.join(f'{w:.3g}' for w in weights)})")
    print(text)
    if args.save:
        np.save(args.save, mean.total)
    return report


if __name__ == "__main__":
    sys.exit(run_guarded(main))
