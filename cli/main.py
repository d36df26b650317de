"""The entry points of train.py, test.py and testall.py. The command line is parsed and checked
here, before torch, transformers and the model code are imported, so that `--help`,
`--list_recipes` and a mistaken option answer at once; `cli.commands` does the work."""

import os
import sys

from config.parsers import eval_parser, train_parser
from config.recipes import describe, recipe_names
from config.resolve import check_command, check_device_name
from errors import ConfigError
from evaluation.ensemble import ensemble_weights
from outputs.folders import Outputs
from .guard import run_guarded


def train(argv=None) -> dict:
    """train.py: its options checked, then the run (see cli.commands.run_train)."""
    given = vars(train_parser().parse_args(argv))
    if given.pop("list_recipes", False):
        for name in recipe_names():
            print(f"{name:22s} {describe(name)}")
        return {}
    check_command(given)
    # torch, transformers and the models are imported only now that the command line holds
    from .commands import run_train
    return run_train(given)


def plan_outputs(args) -> Outputs:
    """--save_sims (with its .json) and --save_ranks, against each other and the inputs; checked
    again, with the data files read, before any scoring."""
    outputs = Outputs(args.overwrite, "testall.py" if args.split == "testall" else "test.py")
    outputs.file(args.save_sims, "--save_sims", ".npy", side=(".json",))
    outputs.file(args.save_ranks, "--save_ranks", ".json")
    for path in args.checkpoint:
        outputs.reads(path, "--checkpoint")
    outputs.reads(args.ids_file, "--ids_file")
    outputs.reads(args.shortlist, "--shortlist")
    outputs.reads(args.compare_sims, "--compare_sims")
    outputs.check(ownership=False)      # checked in full once the data files are declared as inputs
    return outputs


def evaluate(argv=None, default_split: str = "test", coco_testall: bool = False) -> dict:
    """test.py / testall.py: their options checked, then the evaluation (cli.commands.run_evaluation)."""
    description = ("COCO 5-fold 1K and full 5K evaluation" if coco_testall
                   else "Recall@K evaluation of one split (Flickr30K 1K test by default)")
    args = eval_parser(description, default_split).parse_args(argv)
    weights = ensemble_weights(args.weights, len(args.checkpoint))
    check_two_stage_options(args)
    check_device_name(args.device)
    plan_outputs(args)      # the outputs' names and clashes, at once (again once the checkpoints are resolved)
    # torch, transformers and the models are imported only now that the command line holds
    from .commands import run_evaluation
    return run_evaluation(args, weights, coco_testall)


def check_two_stage_options(args) -> None:
    """Options that only make sense together (two-stage retrieval), checked before anything is read."""
    if args.ids_file and not args.extended:
        raise ConfigError("--ids_file names the COCO ids of the rows for --extended: give --extended too")
    if args.rerank_k is None:
        for option in ("shortlist", "compare_sims"):
            if getattr(args, option):
                raise ConfigError(f"--{option} belongs to two-stage retrieval: give --rerank_k K too")
        if args.first_stage_index != "flat":
            raise ConfigError(f"--first_stage_index {args.first_stage_index} belongs to two-stage retrieval: give "
                              "--rerank_k K too")
        return
    refused = [("an ensemble", len(args.checkpoint) > 1), ("--save_sims (two-stage scores only the shortlisted "
               "pairs, not a full matrix: use --save_ranks)", args.save_sims), ("--extended", args.extended),
               ("torchrun", int(os.environ.get("WORLD_SIZE", "1")) > 1)]
    for what, given in refused:
        if given:
            raise ConfigError(f"--rerank_k does not combine with {what}")


def main_train() -> None:
    sys.exit(run_guarded(train))


def main_test() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "test")))


def main_testall() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "testall", coco_testall=True)))
