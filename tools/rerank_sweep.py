"""Two-stage retrieval for several shortlist sizes K: Recall@1/5/10 and the re-ranking time of each,
against the exhaustive scores when they are given, and the curve as a figure.

    python tools/rerank_sweep.py --checkpoint xdim.pth --data_path data/f30k --out sweep/
    python tools/rerank_sweep.py --checkpoint xdim.pth --compare_sims sims.npy --k 10 20 50 100 --out sweep/

The split is encoded once and shortlisted once at the largest K; a smaller K's shortlists are the
first K items of those (the first stage ranks the same way), each re-ranked by the head on its own
and timed. Writes sweep.json (with provenance) and rerank_sweep.png into --out.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from config.parsers import Parser, add_schema_options, data_parser  # noqa: E402
from outputs.folders import Outputs  # noqa: E402

SWEEP = (10, 20, 50, 100, 200, 500)


def main(argv=None) -> list[dict]:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test")
    add_schema_options(parser, parser, ("k",), k={"default": list(SWEEP)})
    parser.add_argument("--compare_sims", default=None, help="the exhaustive scores (test.py --save_sims)")
    parser.add_argument("--out", required=True, help="folder for sweep.json and rerank_sweep.png")
    parser.add_argument("--overwrite", action="store_true")
    add_schema_options(parser, parser, ("device", "eval_batch_size", "workers"), workers={"default": 0})
    data_parser(parser)
    args = parser.parse_args(argv)
    outputs = Outputs(args.overwrite, "rerank_sweep.py")
    outputs.folder_of(args.out, ("sweep.json", "rerank_sweep.png"))
    outputs.reads(args.checkpoint, "--checkpoint")
    outputs.reads(args.compare_sims, "--compare_sims")
    outputs.check()
    # torch, transformers, matplotlib and the model code: only once the command line holds
    from tools._rerank_sweep_heavy import run
    return run(args, outputs)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
