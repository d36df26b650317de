"""Convert an authors' released checkpoint (X-Dim, ESL-region H/A, ESL-CLIP H/A) to our format.

    python tools/convert_checkpoint.py checkpoint_24.pth_528.2.tar xdim_f30k.pth
    python tools/convert_checkpoint.py model_best_heuristic_coco_clip_based.pth esl_clip_h_coco.pth

The output holds the config, the backbone architecture and the mapped weights, like
model_best.pth of our own runs, and loads with test.py / testall.py without --bert_path.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from checkpoints.released import DEFAULT_BERT, DEFAULT_CLIP, convert  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="released checkpoint")
    parser.add_argument("output", help="where to write ours")
    parser.add_argument("--bert_path", default=DEFAULT_BERT, help="BERT architecture of the region systems")
    parser.add_argument("--clip_path", default=DEFAULT_CLIP, help="CLIP tokenizer to record for ESL-CLIP")
    args = parser.parse_args(argv)
    source = convert(args.input, args.output, args)
    print(f"{source} {args.input} -> {args.output}")


if __name__ == "__main__":
    sys.exit(run_guarded(main))
