"""The command-line programs behind train.py, test.py and testall.py."""

import logging
import os
import sys

import numpy as np

from checkpoints.atomic import write_json
from config import eval_parser, resolve_train_config, train_parser
from config.options import RUNTIME_RANGES, check_ranges, explicit_options
from devices import distributed, resolve_device, set_tf32
from errors import ConfigError
from training.rng import seed_everything
from .guard import run_guarded
from .logs import attach_log_file, setup_logging
from .outputs import check_output_dir, check_output_file, clear_previous_run

logger = logging.getLogger("dimmatch")


def train(argv=None) -> dict:
    """Every option, path and file is checked (Trainer construction) before the output folder
    is touched: a failed start leaves it exactly as it was."""
    from training.trainer import Trainer

    parser = train_parser()
    args = parser.parse_args(argv)
    explicit = explicit_options(parser, sys.argv[1:] if argv is None else argv)
    init = start_weights(args, explicit) if args.init_from else None
    cfg = resolve_train_config(args, init.cfg if init else None, explicit)
    if init:
        cfg.init_source = f"{init.source}; {init.history}"
    check_output_dir(cfg.output_dir, cfg.resume, cfg.overwrite)
    device = resolve_device(cfg.device)
    set_tf32(cfg.tf32)
    distributed.init_from_environment(device)
    main = distributed.is_main_process()
    setup_logging(main_process=main, buffer=True)
    seed_everything(cfg.seed + distributed.rank())
    trainer = Trainer(cfg, device, init)
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
    if main and result["best_at"] is not None:
        logger.info("done: best validation rSum %.1f at %s", result["best_rsum"], result["best_at"])
    elif main:
        logger.info("done after step %d, before any validation", result["global_step"])
    return result


def start_weights(args, explicit: set[str]):
    """The model and tokenizer of --init_from (ours or a released format). A --bert_path /
    --clip_path given on the command line is checked against the checkpoint's tokenizer."""
    import argparse

    from checkpoints.loading import load_for_evaluation
    if args.resume:
        raise ConfigError("--resume continues a run with its own weights and optimiser; --init_from starts a new "
                          "one from a checkpoint's weights: give one of them")
    sources = argparse.Namespace(**{key: getattr(args, key) if key in explicit else None
                                    for key in ("bert_path", "clip_path")})
    return load_for_evaluation(args.init_from, sources, require_data=False)


def evaluate(argv=None, default_split: str = "test", coco_testall: bool = False) -> dict:
    """Recall@K of one checkpoint, or of an ensemble: each member is loaded, encoded and scored in
    turn (one model in memory at a time) and the weighted mean of the score matrices is reported
    next to every member's own numbers."""
    from evaluation.ensemble import RunningMean, check_same_captions, ensemble_weights
    from evaluation.extended import extended_metrics, format_extended, load_annotations
    from evaluation.metrics import per_query_results
    from evaluation.protocol import protocol_report

    description = ("COCO 5-fold 1K and full 5K evaluation" if coco_testall
                   else "Recall@K evaluation of one split (Flickr30K 1K test by default)")
    args = eval_parser(description, default_split).parse_args(argv)
    check_ranges(vars(args), RUNTIME_RANGES)
    weights = ensemble_weights(args.weights, len(args.checkpoint))
    if args.save_sims:
        check_output_file(args.save_sims, "--save_sims", ".npy")
    if args.save_ranks:
        check_output_file(args.save_ranks, "--save_ranks", ".json")
    annotations = load_annotations() if args.extended else None
    device = resolve_device(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise ConfigError("--amp fp16 needs CUDA (use --amp bf16 on CPU, or --amp off)")
    set_tf32(args.tf32)
    distributed.init_from_environment(device)
    main = distributed.is_main_process()   # under torchrun the ranks share the scoring, rank 0 reports
    setup_logging(main_process=main)
    say = print if main else (lambda *_: None)
    ensemble = len(args.checkpoint) > 1
    mean, first, members, first_ids = RunningMean(), None, [], None
    for number, (path, weight) in enumerate(zip(args.checkpoint, weights), start=1):
        name = f"member {number} ({path})" if ensemble else path
        sims, info, captions, history, ids = score_checkpoint(path, args, device, coco_testall, say, annotations)
        if not main:
            continue
        report, text = protocol_report(sims, coco_testall, f"{args.split}, {name}" if ensemble else args.split)
        say(text)
        if first is None:
            first, first_ids = (name, captions), ids
        else:
            check_same_captions(first, (name, captions))
        mean.add(sims, weight, name)
        members.append({"checkpoint": path, "history": history, "weight": weight, "metrics": report, "info": info})
        del sims
    if not main:
        return {}
    sims = mean.total
    if ensemble:
        report, text = protocol_report(sims, coco_testall, f"{args.split}, ensemble of {len(members)} "
                                                           f"(weights {' '.join(f'{w:.3g}' for w in weights)})")
        say(text)
    else:
        report = members[0]["metrics"]
    if annotations is not None:
        report = {**report, "extended": extended_metrics(sims, *first_ids, annotations)}
        say(format_extended(report["extended"]))
    if args.save_ranks:
        write_json(per_query_results(sims), args.save_ranks)
        say(f"per-query ranks and top-10 -> {args.save_ranks}")
    if args.save_sims:
        np.save(args.save_sims, sims)
        metrics_path = os.path.splitext(args.save_sims)[0] + ".json"
        saved = {"split": args.split, "metrics": report, "checkpoint": args.checkpoint[0],
                 "checkpoint_history": members[0]["history"], "info": members[0]["info"]}
        if ensemble:
            saved.update(checkpoint=args.checkpoint, members=members, weights=weights)
        write_json(saved, metrics_path)
        say(f"scores -> {args.save_sims}, metrics -> {metrics_path}")
    return {"report": report, "members": members, "sims": sims}


def score_checkpoint(path: str, args, device, coco_testall: bool, say=print, annotations=None):
    """(score matrix, timing info, captions in row order, training history, COCO (image ids, caption
    ids) for --extended or None) of one checkpoint; the model is released before returning."""
    from checkpoints.loading import load_for_evaluation
    from datasets.builders import load_eval_split
    from evaluation.protocol import COCO_FOLDS, compute_split_scores

    folds = COCO_FOLDS if coco_testall else 1

    def check_data(cfg):
        """The split and, for --extended, its COCO ids: both checked before the model is built."""
        split_data = load_eval_split(cfg, args.split, folds=folds)
        ids = None if annotations is None else coco_ids(cfg, args, len(split_data[0]), annotations)
        return split_data, ids

    loaded = load_for_evaluation(path, args, check_data)
    split_data, ids = loaded.data
    say(f"checkpoint {path}: {loaded.source}; {loaded.history}")
    model = loaded.model.to(device)
    sims, info = compute_split_scores(model, split_data, loaded.caption_encoder(), device, amp=args.amp,
                                      batch_size=args.eval_batch_size, workers=args.workers, mem_gb=args.eval_mem_gb,
                                      progress=distributed.is_main_process(), shard=True)
    return sims, info, split_data[1], loaded.history, ids


def coco_ids(cfg, args, n_images: int, annotations: dict):
    """(COCO image id per row, caption id per column) of the evaluated split, checked (--extended)."""
    from evaluation.extended import precomp_ids, read_ids, row_ids
    if args.ids_file is not None:
        ids, source = read_ids(args.ids_file), args.ids_file
    elif cfg.encoders == "region_bert":
        ids, source = precomp_ids(cfg, args.split)
    else:
        from datasets.karpathy import annotation_file, caption_ids
        found = caption_ids(cfg.dataset, cfg.ann_path, args.split)
        source = annotation_file(cfg.dataset, cfg.ann_path, args.split)
        if found is None:
            raise ConfigError(f"{source} gives its captions no COCO ids (sentences[].id), so --extended cannot "
                              "identify them; give --ids_file with the caption ids in the file's order")
        ids = np.array(found, dtype=np.int64)
    return row_ids(ids, n_images, annotations, source)


def main_train() -> None:
    sys.exit(run_guarded(train))


def main_test() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "test")))


def main_testall() -> None:
    sys.exit(run_guarded(lambda argv: evaluate(argv, "testall", coco_testall=True)))
