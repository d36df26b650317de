"""Convert an authors' released checkpoint (X-Dim, ESL-region H/A, ESL-CLIP H/A), or a .pth of ours,
to a model folder (--format hub) or to our .pth format (--format pth, the default).

    python tools/convert_checkpoint.py checkpoint_24.pth_528.2.tar xdim_f30k --format hub
    python tools/convert_checkpoint.py runs/xdim/checkpoint_last.pth xdim_f30k --format hub
    python tools/convert_checkpoint.py model_best_heuristic_coco_clip_based.pth esl_clip_h_coco.pth

It reads every file test.py reads. The output holds the config, the backbone architecture, the
tokenizer and the mapped weights, like model_best of our own runs, and loads with test.py /
testall.py without --bert_path or --clip_path. A model folder (config.json, model.safetensors, the
tokenizer's files, README.md) holds no pickle and can be published as it is
(huggingface-cli upload ORG/NAME FOLDER).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from config.options import all_options  # noqa: E402
from config.parsers import Parser  # noqa: E402
from errors import ConfigError  # noqa: E402
from outputs.folders import Outputs  # noqa: E402


def main(argv=None) -> str:
    options = all_options()
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="released checkpoint, a .pth of ours, or a hub name (ORG/NAME)")
    parser.add_argument("output", help="where to write it: a folder (--format hub) or a .pth file")
    parser.add_argument("--format", choices=("pth", "hub"), default="pth",
                        help="hub: a model folder (config.json, model.safetensors, tokenizer, README.md); "
                             "pth: one file of ours (default)")
    parser.add_argument("--bert_path", default=None, help="BERT architecture and tokenizer of the region systems "
                                                          f"(default: {options['bert_path'].default})")
    parser.add_argument("--clip_path", default=None, help="CLIP tokenizer to record for ESL-CLIP, a folder of its "
                                                          f"files will do (default: {options['clip_path'].default})")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    args = parser.parse_args(argv)
    outputs = Outputs(args.overwrite, "convert_checkpoint.py")
    if args.format == "hub":
        if args.output.rstrip("/").endswith((".pth", ".tar", ".pt", ".bin")):
            raise ConfigError(f"output {args.output}: --format hub writes a model folder; give a folder name "
                              "(without .pth), or --format pth for one file")
        if os.path.isfile(args.output):
            raise ConfigError(f"output {args.output} is a file; --format hub writes a model folder: give a folder name")
        parent = os.path.dirname(os.path.abspath(args.output.rstrip("/")))
        if os.path.basename(args.output.rstrip("/")) == "model_best" and os.path.isfile(os.path.join(parent,
                                                                                                      "config.json")):
            raise ConfigError(f"output {args.output} is the model_best of the training run in {parent}, which its "
                              "best_metrics.json and train.log describe; write elsewhere")
        outputs.file(args.output, "output", "", folder=True)
    else:
        if os.path.isdir(args.output) or not args.output.endswith(".pth"):
            raise ConfigError(f"output {args.output} must end in .pth (--format hub writes a model folder)")
        outputs.file(args.output, "output", ".pth")
    # torch and the model code: only once the command line holds
    from checkpoints.convert import convert
    from checkpoints.hub import check_replaceable, resolve
    source_path = resolve(args.input, "input")
    if args.format == "hub" and args.overwrite and os.path.isdir(args.output):
        check_replaceable(args.output.rstrip("/"))
    if os.path.isfile(os.path.join(source_path, "config.json")) and \
            os.path.realpath(args.output).startswith(os.path.realpath(source_path) + os.sep):
        raise ConfigError(f"output {args.output} lies inside input {args.input}; write it elsewhere")
    outputs.reads(source_path, "input")
    outputs.check()
    outputs.claim()
    source = convert(source_path, args.output, args, args.format, replace=args.overwrite)
    print(f"{source} {args.input} -> {args.output}")
    return source


if __name__ == "__main__":
    sys.exit(run_guarded(main))
