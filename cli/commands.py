"""The command-line programs behind train.py, test.py and testall.py."""

import logging
import os
import sys

import numpy as np

from checkpoints.atomic import write_json
from config import eval_parser, resolve_train_config, train_parser
from config.options import RUNTIME_RANGES, check_ranges
from devices import distributed, resolve_device
from errors import ConfigError
from evaluation.metrics import format_metrics
from training.rng import seed_everything
from .guard import run_guarded
from .logs import attach_log_file, setup_logging
from .outputs import check_output_dir, check_output_file, clear_previous_run

logger = logging.getLogger("dimmatch")


def train(argv=None) -> dict:
    """Every option, path and file is checked (Trainer construction) before the output folder
    is touched: a failed start leaves it exactly as it was."""
    from training.trainer import Trainer

    cfg = resolve_train_config(train_parser().parse_args(argv))
    check_output_dir(cfg.output_dir, cfg.resume, cfg.overwrite)
    device = resolve_device(cfg.device)
    distributed.init_from_environment(device)
    main = distributed.is_main_process()
    setup_logging(main_process=main, buffer=True)
    seed_everything(cfg.seed + distributed.rank())
    trainer = Trainer(cfg, device)
    if main:
        if cfg.overwrite:
            clear_previous_run(cfg.output_dir)
        os.makedirs(cfg.output_dir, exist_ok=True)
        attach_log_file(os.path.join(cfg.output_dir, "train.log"))
        logger.info("resolved config:\n%s", cfg.to_json())
        write_json(cfg.to_dict(), os.path.join(cfg.output_dir, "config.json"))
    distributed.barrier()
    result = trainer.fit()
    if result["interrupted"]:
        raise KeyboardInterrupt(f"checkpoint_last written after step {result['global_step']}; "
                                "continue with --resume auto")
    if main:
        logger.info("done: best validation rSum %.1f at %s", result["best_rsum"], result["best_at"])
    return result


def evaluate(argv=None, default_split: str = "test", coco_testall: bool = False) -> dict:
    from checkpoints.loading import load_for_evaluation
    from datasets.builders import load_eval_split
    from datasets.captions import caption_encoder_for
    from evaluation.protocol import COCO_FOLDS, evaluate_split, evaluate_testall

    description = ("COCO 5-fold 1K and full 5K evaluation" if coco_testall
                   else "Recall@K evaluation of one split (Flickr30K 1K test by default)")
    args = eval_parser(description, default_split).parse_args(argv)
    check_ranges(vars(args), RUNTIME_RANGES)
    if args.save_sims:
        check_output_file(args.save_sims, "--save_sims", ".npy")
    setup_logging()
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA (use --amp bf16 on CPU, or --amp off)")
    folds = COCO_FOLDS if coco_testall else 1
    loaded = load_for_evaluation(args.checkpoint, args, lambda cfg: load_eval_split(cfg, args.split, folds=folds))
    model, cfg = loaded.model, loaded.cfg
    print(f"checkpoint {args.checkpoint}: {loaded.source}; {loaded.history}")
    model.to(device)
    caption_encoder = caption_encoder_for(cfg, loaded.tokenizer, model.text_tokens()["positions"])
    options = dict(amp=args.amp, batch_size=args.eval_batch_size, workers=args.workers, mem_gb=args.eval_mem_gb)
    if coco_testall:
        result = evaluate_testall(model, loaded.data, caption_encoder, device, **options)
        report = {"five_fold_1k": result["five_fold_1k"]["mean"], "full_5k": result["full_5k"],
                  "folds": result["five_fold_1k"]["folds"]}
        fold_images = result["five_fold_1k"]["fold_images"]
        print(format_metrics(result["five_fold_1k"]["mean"], f"{args.split}: mean of 5 folds of {fold_images} images"))
        print(format_metrics(result["full_5k"], f"{args.split}: full {result['sims'].shape[0]} images"))
    else:
        result = evaluate_split(model, loaded.data, caption_encoder, device, **options)
        report = result["metrics"]
        print(format_metrics(report, f"{args.split}: {result['sims'].shape[0]} images, "
                                     f"{result['sims'].shape[1]} captions"))
    if args.save_sims:
        np.save(args.save_sims, result["sims"])
        metrics_path = os.path.splitext(args.save_sims)[0] + ".json"
        write_json({"checkpoint": args.checkpoint, "checkpoint_history": loaded.history, "split": args.split,
                    "metrics": report, "info": result["info"]}, metrics_path)
        print(f"scores -> {args.save_sims}, metrics -> {metrics_path}")
    return {"report": report, "info": result["info"], "sims": result["sims"]}


def main_train() -> None:
    sys.exit(run_guarded(train))


def main_test() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "test")))


def main_testall() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "testall", coco_testall=True)))
