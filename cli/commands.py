"""The work of train.py, test.py and testall.py, once cli.main has parsed and checked their
command lines (`train` and `evaluate` are re-exported for the callers that pass an argv)."""

import argparse
import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from checkpoints.atomic import atomic_save_npy, write_json
from checkpoints.hub import resolve as resolve_checkpoint
from checkpoints.loading import load_model, read_checkpoint_config, read_payload
from checkpoints.payload import Payload
from config.resolve import resumed_config
from datasets.precomp import read_ids
from devices import check_device_options, distributed, resolve_device, set_tf32
from errors import ConfigError, Stopped, UserError
from evaluation.ensemble import RunningMean, check_same_captions
from evaluation.extended import extended_metrics, format_extended, load_annotations, row_ids
from evaluation.metrics import DIRECTIONS, RECALL_AT, RECALL_KEYS, per_query_results, shortlist_results
from evaluation.protocol import COCO_FOLDS, compute_split_scores, encode_split, protocol_report
from outputs.folders import (FolderLock, Outputs, check_output_dir, claim_run, discard_previous_run, holds_run,
                             remove_partial_files, restore_previous_run, set_aside_previous_run)
from pairs import PAIRS, layout_of, load_eval_split, pair_of
from pairs.resolve import resolve_train_config
from provenance import array_sha256, checkpoint_identity, data_identity, read_scores, record
from retrieval.two_stage import two_stage_report
from training.rng import seed_everything
from training.state import BEST, LAST
from training.trainer import Trainer
from .logs import attach_log_file, setup_logging
from .main import evaluate, plan_outputs, train  # noqa: F401  (evaluate, train: for callers that pass an argv)

logger = logging.getLogger("dimmatch")


def run_config(given: dict):
    """(config, --init_from's loaded model or None, (path, payload) of --resume or None) of a run:
    a resumed run's saved config, or a new one resolved from the command line (and --init_from)."""
    named = given.get("init_from")
    if named:
        given["init_from"] = resolve_checkpoint(named, "--init_from")
    init, resume = None, resume_checkpoint(given)
    if resume is not None:
        cfg = resumed_config(given, resume[1].config, resume[0])
    else:
        init = start_weights(given) if given.get("init_from") else None
        cfg = resolve_train_config(given, init.cfg if init else None)
        if init:
            hub_name = not os.path.exists(named)       # resolved through the HuggingFace cache
            cfg.init_source = f"{init.source}; {init.history}" + (f"; hub name {named}" if hub_name else "")
            cfg.init_sha256 = checkpoint_identity(cfg.init_from)["sha256"]
    check_device_options(cfg)
    return cfg, init, resume


def run_train(given: dict) -> dict:
    """A run from train.py's checked options. Every option, path and file is checked before the
    output folder is touched, and the folder is held by this process from then on: a failed start
    leaves it as it was (with --overwrite, the previous run is set aside until the new one's first
    checkpoint)."""

    print_only = given.pop("print_config", False)
    cfg, init, resume = run_config(given)
    if print_only:
        print(cfg.to_json())
        return {"config": cfg}
    # --resume auto in a folder whose run of ours never wrote a checkpoint starts that run again; in a
    # folder without a run of ours (a new one, as batch scripts pass it on every start) it starts one
    restart = bool(given.get("resume")) and resume is None and holds_run(cfg.output_dir)
    continued = resume is not None or restart
    check_output_dir(cfg.output_dir, continued, cfg.overwrite, {"--init_from": cfg.init_from})
    device = resolve_device(cfg.device)
    set_tf32(cfg.tf32)
    distributed.init_from_environment(device)
    main = distributed.is_main_process()
    setup_logging(main_process=main, buffer=True)
    seed_everything(cfg.seed + distributed.rank())
    lock = FolderLock(cfg.output_dir, "--output_dir").acquire() if main else None
    aside, started = None, False
    try:
        if main:
            # checked again under the lock: another run may have started here since the first check
            check_output_dir(cfg.output_dir, continued, cfg.overwrite, {"--init_from": cfg.init_from})
            remove_partial_files(cfg.output_dir)
        trainer = Trainer(cfg, device, init, resume)
        if main:
            if cfg.overwrite or restart:
                aside = set_aside_previous_run(cfg.output_dir)
                trainer.state.on_first_save = lambda: discard_previous_run(aside)
            claim_run(cfg.output_dir)
            attach_log_file(os.path.join(cfg.output_dir, "train.log"))
            if restart:
                logger.info("--resume auto: no checkpoint in %s yet, starting its run again", cfg.output_dir)
            logger.info("resolved config:\n%s", cfg.to_json())
            write_json(cfg.to_dict(), os.path.join(cfg.output_dir, "config.json"))
        started = True
        distributed.barrier()
        result = trainer.fit()
    except BaseException:
        if main and aside is not None and trainer.state.on_first_save is not None:
            restore_previous_run(cfg.output_dir, aside)
        if lock is not None:
            lock.release(undo=not started)
            lock = None
        raise
    finally:
        if lock is not None:
            lock.release()
    if result["stopped_by"] is not None:
        raise Stopped(result["stopped_by"], f"checkpoint_last written after step {result['global_step']}; "
                                            "continue with --resume auto")
    if main and result["best_at"] is not None:
        at = result["best_at"]
        logger.info("done: best validation rSum %.1f at epoch %d, step %d (global step %d)", result["best_rsum"],
                    at["epoch"], at["step_in_epoch"], at["global_step"])
    elif main:
        logger.info("done after step %d, before any validation", result["global_step"])
    return result


def resume_checkpoint(given: dict):
    """(path, Payload) of the checkpoint --resume continues, or None for --resume auto in a
    folder without checkpoint_last (a run that never wrote one, or none at all). It is read by
    the reader of evaluation and --init_from, with its training state."""
    path = given.get("resume")
    if not path:
        return None
    if path == "auto":
        folder = given.get("output_dir", "runs/exp")
        path = os.path.join(folder, LAST)
        if not os.path.isfile(path):
            best = [name for name in (BEST, BEST + ".pth") if os.path.exists(os.path.join(folder, name))]
            if best:
                raise ConfigError(f"--resume auto: {folder} holds {best[0]} but no {LAST}, so there is nothing to "
                                  "resume; keep the run and start elsewhere, or replace it with --overwrite")
            return None
    payload, _ = read_payload(path, training_state=True)
    if not isinstance(payload, Payload):
        raise ConfigError(f"{path} is an authors' released checkpoint: it cannot be resumed; start from its weights "
                          "with --init_from")
    if not payload.resumable:
        raise ConfigError(f"{path} holds weights only (like {BEST} or a converted checkpoint): it cannot be "
                          f"resumed; resume from the run's {LAST}, or start from these weights with --init_from")
    run_folder = os.path.dirname(os.path.abspath(path))
    output_dir = given.setdefault("output_dir", run_folder)
    if os.path.realpath(output_dir) != os.path.realpath(run_folder):
        raise ConfigError(f"--resume {path} continues the run in {run_folder}, not in --output_dir {output_dir}: "
                          "resume it there (its best model and history are there), or start a new run from its "
                          "weights with --init_from")
    return path, payload


def start_weights(given: dict):
    """The model and tokenizer of --init_from (ours or a released format). A --bert_path /
    --clip_path given on the command line is checked against the checkpoint's tokenizer."""

    read = read_checkpoint_config(given["init_from"], argparse.Namespace(**given), require_data=False)
    return load_model(read)


@dataclass
class Member:
    """One checkpoint of an evaluation, read and checked with its data before anything is scored."""

    path: str
    name: str             # "member N (path)" in an ensemble, else the path
    weight: float
    read: object          # checkpoints.loading.CheckpointConfig
    split_data: object    # datasets.layouts.EvalSplit
    ids: tuple | None     # --extended: (COCO image id per row, caption id per column)
    identity: dict        # provenance: the checkpoint's content


@dataclass
class Scored:
    """A member's score matrix and how it was computed."""

    sims: np.ndarray
    info: dict


def run_evaluation(args, weights: list, coco_testall: bool) -> dict:
    """Recall@K of one checkpoint, or of an ensemble: every member is read and checked with its
    data first, then each is loaded, encoded and scored in turn (one model in memory at a time);
    the weighted mean of the score matrices is reported next to every member's own numbers."""

    args.checkpoint = [resolve_checkpoint(path) for path in args.checkpoint]
    args.shortlist = resolve_checkpoint(args.shortlist, "--shortlist")
    outputs = plan_outputs(args)
    annotations = load_annotations() if args.extended else None
    check_device_options(args)
    device = resolve_device(args.device)
    set_tf32(args.tf32)
    distributed.init_from_environment(device)
    main = distributed.is_main_process()   # under torchrun the ranks share the scoring, rank 0 reports
    setup_logging(main_process=main)
    say = print if main else (lambda *_: None)
    ensemble = len(args.checkpoint) > 1
    members = [prepare_member(path, f"member {number} ({path})" if ensemble else path, weight, args, coco_testall,
                              annotations, keep_payload=not ensemble)
               for number, (path, weight) in enumerate(zip(args.checkpoint, weights), start=1)]
    shortlister = None
    if args.shortlist:
        shortlister = prepare_member(args.shortlist, f"--shortlist {args.shortlist}", 1.0, args, coco_testall, None,
                                     keep_payload=False)
    for later in members[1:] + ([shortlister] if shortlister else []):
        check_same_captions((members[0].name, members[0].split_data.captions), (later.name, later.split_data.captions))
    check_evaluation_options(args, members + ([shortlister] if shortlister else []))
    for member in members + ([shortlister] if shortlister else []):
        for path in layout_of(member.read.cfg).input_files(member.read.cfg, args.split):
            outputs.reads(path, f"the data of split {args.split}")
    outputs.check()
    if args.rerank_k:
        return evaluate_two_stage(args, members[0], shortlister, device, coco_testall, say, outputs)
    per_image = members[0].split_data.captions_per_image
    mean, reports = RunningMean(), []
    for member in members:
        scored = score_member(member, args, device, say)
        if not main:
            continue
        report, text = protocol_report(scored.sims, coco_testall,
                                       f"{args.split}, {member.name}" if ensemble else args.split, per_image)
        say(text)
        mean.add(scored.sims, member.weight, member.name)
        reports.append({"checkpoint": member.path, "history": member.read.history, "weight": member.weight,
                        "metrics": report, "info": scored.info, "identity": member.identity})
    if not main:
        return {}
    sims = mean.total
    if ensemble:
        report, text = protocol_report(sims, coco_testall, f"{args.split}, ensemble of {len(members)} "
                                                           f"(weights {' '.join(f'{w:.3g}' for w in weights)})",
                                       per_image)
        say(text)
    else:
        report = reports[0]["metrics"]
    if annotations is not None:
        report = {**report, "extended": extended_metrics(sims, *members[0].ids, annotations)}
        say(format_extended(report["extended"]))
    provenance = record("scores", [member.identity for member in members],
                        data_identity(members[0].split_data.images, members[0].split_data.captions, args.split), weights=weights,
                        protocol="coco_5fold" if coco_testall else "single", amp=args.amp)
    write_outputs(args, outputs, sims, report, reports, provenance, say, per_image)
    return {"report": report, "members": reports, "sims": sims, "provenance": provenance}


def check_evaluation_options(args, members: list) -> None:
    """Options given for models that are not there."""
    present = {pair_of(member.read.cfg).name for member in members}
    for name, pair in PAIRS.items():
        if name in present:
            continue
        for option in pair.options:
            if option.evaluation and getattr(args, option.name, None) is not None:
                raise ConfigError(f"--{option.name} applies to {name} models ({pair.summary}); "
                                  f"{members[0].path} is a {pair_of(members[0].read.cfg).name} model")


def evaluate_two_stage(args, member, shortlister, device, coco_testall: bool, say, outputs: Outputs) -> dict:
    """Two-stage retrieval of one checkpoint: its global embeddings (or --shortlist's) shortlist
    --rerank_k items per query, its head re-ranks them; the report gives the cost next to Recall@K,
    and with --compare_sims what it loses against the exhaustive scores."""

    data = data_identity(member.split_data.images, member.split_data.captions, args.split)
    per_image = member.split_data.captions_per_image
    exhaustive = read_scores(args.compare_sims, member.path, data) if args.compare_sims else None
    options = dict(amp=args.amp, batch_size=args.eval_batch_size, workers=args.workers,
                   progress=distributed.is_main_process())
    started = time.perf_counter()
    loaded = load_model(member.read)
    say(f"checkpoint {member.path}: {loaded.source}; {loaded.history}")
    model = loaded.model.to(device)
    encoded = encode_split(model, member.split_data, loaded.caption_encoder(), device, global_vectors=not shortlister,
                           **options)
    if shortlister is None:
        first_stage, source = encoded[2:], ("exact (the head's own inner product)" if model.head.exact_global
                                            else "the pooled encoder features")
    else:
        other = load_model(read_again(shortlister, args))
        first_stage = encode_split(other.model.to(device), shortlister.split_data, other.caption_encoder(), device,
                                   global_vectors=True, **options)[2:]
        source = f"--shortlist {shortlister.path} ({other.source})"
        del other
    encode_seconds = time.perf_counter() - started
    report, text, whole = two_stage_report(model.head, encoded[:2], first_stage, args.rerank_k, args.first_stage_index,
                                           coco_testall, args.split, device, args.eval_mem_gb, args.amp,
                                           distributed.is_main_process(), per_image)
    say(text)
    say(f"first stage: {source}; encoding {encode_seconds:.1f}s")
    above = [k for k in RECALL_AT if k > args.rerank_k]
    if above:
        say(f"note: --rerank_k {args.rerank_k} is below {'/'.join(f'R@{k}' for k in above)}: R@k for k > K counts only "
            "what the shortlist holds, so it equals R@K at most")
    report["first_stage"], report["encode_seconds"] = source, round(encode_seconds, 3)
    if exhaustive is not None:
        full, _ = protocol_report(exhaustive, coco_testall, args.split, per_image)
        report["exhaustive"], report["lost"] = full, recall_lost(full, report)
        say("recall lost against exhaustive scoring: " + ", ".join(
            f"{direction} R@{k[1:]} {report['lost']['full_5k' if coco_testall else 'split'][direction][k]:.2f}"
            for direction in DIRECTIONS for k in RECALL_KEYS))
    provenance = record("two_stage", [member.identity] + ([shortlister.identity] if shortlister else []), data,
                        rerank_k=args.rerank_k, first_stage=source, index=args.first_stage_index, amp=args.amp)
    if args.save_ranks:
        outputs.claim()
        write_json({"provenance": provenance, **shortlist_results(whole, per_image=per_image)}, args.save_ranks, args.overwrite)
        say(f"per-query ranks and top-10 -> {args.save_ranks}")
    return {"report": report, "provenance": provenance}


def recall_lost(exhaustive: dict, two_stage: dict) -> dict:
    """Exhaustive minus two-stage R@1/5/10 per direction (per protocol block for COCO testall)."""
    blocks = ("five_fold_1k", "full_5k") if "full_5k" in exhaustive else (None,)
    lost = {}
    for block in blocks:
        first, second = (exhaustive, two_stage) if block is None else (exhaustive[block], two_stage[block])
        lost[block or "split"] = {d: {k: first[d][k] - second[d][k] for k in RECALL_KEYS} for d in DIRECTIONS}
    return lost


def read_again(member: Member, args):
    """A member's checkpoint read again (members let go of their weights until they are needed),
    checked to be the file it was when the evaluation started."""
    if checkpoint_identity(member.path)["sha256"] != member.identity["sha256"]:
        raise UserError(f"checkpoint {member.path} was replaced while the evaluation was running")
    return read_checkpoint_config(member.path, args)


def prepare_member(path: str, name: str, weight: float, args, coco_testall: bool, annotations,
                   keep_payload: bool) -> Member:
    """A checkpoint's config, tokenizer and split (and COCO ids for --extended), all checked, and
    its content identity; the model is not built yet. An ensemble member lets go of its weights
    until it is scored, so that only one checkpoint is in memory at a time."""
    read = read_checkpoint_config(path, args)
    if annotations is not None and not layout_of(read.cfg).coco(read.cfg):
        raise ConfigError(f"--extended adds ECCV Caption and CxC, which annotate MS-COCO's 5K test images; {path} "
                          "is evaluated on other data")
    split_data = load_eval_split(read.cfg, args.split, folds=COCO_FOLDS if coco_testall else 1)
    ids = None if annotations is None else coco_ids(read.cfg, args, len(split_data.images), annotations)
    if not keep_payload:
        read.payload = None
    return Member(path, name, weight, read, split_data, ids, checkpoint_identity(path))


def score_member(member: Member, args, device, say) -> Scored:
    """Build one member's model, encode its split once and score every pair; the model is released
    before returning. An ensemble member reads its file again here, which must not have changed."""
    read = member.read if member.read.payload is not None else read_again(member, args)
    say(f"checkpoint {member.path}: {read.source}; {read.history}")
    loaded = load_model(read)
    model = loaded.model.to(device)
    sims, info = compute_split_scores(model, member.split_data, loaded.caption_encoder(), device, amp=args.amp,
                                      batch_size=args.eval_batch_size, workers=args.workers, mem_gb=args.eval_mem_gb,
                                      progress=distributed.is_main_process(), shard=True)
    return Scored(sims, info)


def write_outputs(args, outputs: Outputs, sims, report: dict, members: list, provenance: dict, say,
                  per_image: int) -> None:
    """--save_ranks and --save_sims (+ .json), each with the provenance record of the scores."""
    outputs.claim()
    if args.save_ranks:
        write_json({"provenance": provenance, **per_query_results(sims, per_image=per_image)}, args.save_ranks, args.overwrite)
        say(f"per-query ranks and top-10 -> {args.save_ranks}")
    if args.save_sims:
        metrics_path = os.path.splitext(args.save_sims)[0] + ".json"
        saved = {"split": args.split, "metrics": report, "checkpoint": members[0]["checkpoint"],
                 "checkpoint_history": members[0]["history"], "info": members[0]["info"],
                 "provenance": {**provenance, "matrix_sha256": array_sha256(sims)}}
        if len(members) > 1:
            saved.update(checkpoint=[m["checkpoint"] for m in members], members=members,
                         weights=provenance["weights"])
        atomic_save_npy(sims, args.save_sims, args.overwrite)
        write_json(saved, metrics_path, args.overwrite)
        say(f"scores -> {args.save_sims}, metrics -> {metrics_path}")


def coco_ids(cfg, args, n_images: int, annotations: dict):
    """(COCO image id per row, caption id per column) of the evaluated split, checked (--extended)."""
    if args.ids_file is not None:
        ids, source = read_ids(args.ids_file), args.ids_file
    else:
        layout = layout_of(cfg)
        if layout.caption_ids is None:
            raise ConfigError(f"the {layout.name} layout gives no COCO ids of its captions; give --ids_file")
        ids, source = layout.caption_ids(cfg, args.split)
    return row_ids(np.asarray(ids, dtype=np.int64), n_images, annotations, source)

