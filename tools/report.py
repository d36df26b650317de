"""A self-contained HTML page of what a model retrieves and what it learned about dimensions.

    python tools/report.py --checkpoint runs/x/model_best --out report/             # scores the test split
    python tools/report.py --checkpoint runs/x/model_best --sims sims.npy --out report/
    python tools/report.py --checkpoint X --dataset f30k --image_root ... --ann_path ... --split test --out report/

For sampled caption queries, the top-5 images (thumbnails for raw-image datasets and for region
features extracted by tools/extract_regions.py, with their top 5 regions boxed; for other region
datasets the image number and its first caption) and, for sampled images, the top-5 captions, the
correct items marked and the failures first; the Recall@K curve for K = 1..100; and what the head
learned: X-Dim's dependency matrix D and its sparsity, ESL's level weights a_l and the H kernels or
the A selective masks. Figures are written as PNG files and embedded in `index.html`, which needs
nothing else to open. matplotlib is needed (pip install matplotlib).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cli.guard import run_guarded  # noqa: E402
from config.parsers import Parser, add_schema_options, data_parser  # noqa: E402
from errors import ConfigError  # noqa: E402
from outputs.folders import Outputs  # noqa: E402

REPORT_FILES = ("index.html", "recall_at_k.png", "dimensions.png", "report.json")


def main(argv=None) -> str:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--sims", default=None, help="scores saved by test.py --save_sims for the same split")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="folder for index.html and the PNG figures")
    parser.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    add_schema_options(parser, parser, ("queries", "seed", "device", "workers", "eval_batch_size", "eval_mem_gb",
                                        "rerank_k"),
                       seed={"help": "seed of the sampled queries"}, workers={"default": 0},
                       rerank_k={"help": "show two-stage retrieval: the model's global embeddings (or --shortlist's) "
                                         "shortlist K items per query, the head re-ranks them"})
    parser.add_argument("--shortlist", default=None, help="--rerank_k: the checkpoint whose embeddings shortlist")
    data_parser(parser)
    args = parser.parse_args(argv)
    if args.rerank_k and args.sims or args.shortlist and not args.rerank_k:
        raise ConfigError("--sims shows exhaustive scores and --rerank_k (with an optional --shortlist) two-stage "
                          "ones: give one of them")
    outputs = Outputs(args.overwrite, "report.py")
    outputs.folder_of(args.out, REPORT_FILES)
    outputs.reads(args.checkpoint, "--checkpoint")
    outputs.reads(args.sims, "--sims")
    outputs.reads(args.shortlist, "--shortlist")
    outputs.check()
    # torch, transformers and the model code: only once the command line holds
    from tools._report_heavy import run
    return run(args, outputs)


if __name__ == "__main__":
    sys.exit(run_guarded(main))
