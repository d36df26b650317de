"""Convert an authors' released checkpoint (X-Dim, ESL-region H/A, ESL-CLIP H/A) to our format.

    python tools/convert_checkpoint.py checkpoint_24.pth_528.2.tar xdim_f30k.pth
    python tools/convert_checkpoint.py model_best_heuristic_coco_clip_based.pth esl_clip_h_coco.pth

It reads every file test.py reads. The output holds the config, the backbone architecture, the
tokenizer and the mapped weights, like model_best.pth of our own runs, and loads with test.py /
testall.py without --bert_path or --clip_path.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from cli.outputs import Outputs  # noqa: E402
from config.options import all_options  # noqa: E402
from config.parsers import Parser  # noqa: E402


def main(argv=None) -> str:
    options = all_options()
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="released checkpoint")
    parser.add_argument("output", help="where to write ours (.pth)")
    parser.add_argument("--bert_path", default=None, help="BERT architecture and tokenizer of the region systems "
                                                          f"(default: {options['bert_path'].default})")
    parser.add_argument("--clip_path", default=None, help="CLIP tokenizer to record for ESL-CLIP, a folder of its "
                                                          f"files will do (default: {options['clip_path'].default})")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    args = parser.parse_args(argv)
    outputs = Outputs(args.overwrite, "convert_checkpoint.py")
    outputs.file(args.output, "output", ".pth")
    outputs.reads(args.input, "input")
    outputs.check()
    outputs.claim()
    from checkpoints.released import convert   # torch and the model code: only once the command line holds
    source = convert(args.input, args.output, args)
    print(f"{source} {args.input} -> {args.output}")
    return source


if __name__ == "__main__":
    sys.exit(run_guarded(main))
