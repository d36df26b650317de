"""The command-line programs behind train.py, test.py and testall.py."""

import logging
import os
import sys

import numpy as np

from checkpoints.atomic import write_json
from config import eval_parser, resolve_train_config, train_parser
from devices import distributed, resolve_device
from errors import ConfigError
from evaluation.metrics import format_metrics
from training.rng import seed_everything
from .guard import run_guarded
from .logs import setup_logging

logger = logging.getLogger("dimmatch")


def train(argv=None) -> dict:
    from training.trainer import Trainer

    cfg = resolve_train_config(train_parser().parse_args(argv))
    device = resolve_device(cfg.device)
    distributed.init_from_environment(device)
    main = distributed.is_main_process()
    os.makedirs(cfg.output_dir, exist_ok=True)
    setup_logging(os.path.join(cfg.output_dir, "train.log"), main)
    seed_everything(cfg.seed + distributed.rank())
    if main:
        logger.info("resolved config:\n%s", cfg.to_json())
        write_json(cfg.to_dict(), os.path.join(cfg.output_dir, "config.json"))
    result = Trainer(cfg, device).fit()
    if main:
        logger.info("done: best validation rSum %.1f at %s", result["best_rsum"], result["best_at"])
    return result


def evaluate(argv=None, default_split: str = "test", coco_testall: bool = False) -> dict:
    from evaluation.protocol import evaluate_split, evaluate_testall
    from checkpoints.loading import load_for_evaluation

    description = ("COCO 5-fold 1K and full 5K evaluation" if coco_testall
                   else "Recall@K evaluation of one split (Flickr30K 1K test by default)")
    args = eval_parser(description, default_split).parse_args(argv)
    setup_logging()
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA (use --amp bf16 on CPU, or --amp off)")
    model, cfg, source = load_for_evaluation(args.checkpoint, args)
    logger.info("loaded %s from %s", source, args.checkpoint)
    model.to(device)
    options = dict(amp=args.amp, batch_size=args.eval_batch_size, workers=args.workers, mem_gb=args.eval_mem_gb)
    if coco_testall:
        result = evaluate_testall(model, cfg, args.split, device, **options)
        report = {"five_fold_1k": result["five_fold_1k"]["mean"], "full_5k": result["full_5k"],
                  "folds": result["five_fold_1k"]["folds"]}
        fold_images = result["five_fold_1k"]["fold_images"]
        print(format_metrics(result["five_fold_1k"]["mean"], f"{args.split}: mean of 5 folds of {fold_images} images"))
        print(format_metrics(result["full_5k"], f"{args.split}: full {result['sims'].shape[0]} images"))
    else:
        result = evaluate_split(model, cfg, args.split, device, **options)
        report = result["metrics"]
        print(format_metrics(report, f"{args.split}: {result['sims'].shape[0]} images, "
                                     f"{result['sims'].shape[1]} captions"))
    if args.save_sims:
        np.save(args.save_sims, result["sims"])
        metrics_path = os.path.splitext(args.save_sims)[0] + ".json"
        write_json({"checkpoint": args.checkpoint, "split": args.split, "metrics": report,
                    "info": result["info"]}, metrics_path)
        print(f"scores -> {args.save_sims}, metrics -> {metrics_path}")
    return {"report": report, "info": result["info"], "sims": result["sims"]}


def main_train() -> None:
    sys.exit(run_guarded(train))


def main_test() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "test")))


def main_testall() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "testall", coco_testall=True)))
