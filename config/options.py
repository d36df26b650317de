"""Options for train.py / test.py / testall.py.

Defaults that differ between the region systems and ESL-CLIP are left as None in the parser
and filled from `PRESETS` for the chosen encoder pair, so `--help` stays readable and the
resolved values are printed and saved with every run.
"""

import argparse
import json
import os
from types import SimpleNamespace

from datasets.captions import CLIP_TEXT_CLEANINGS, CLIP_TRUNCATIONS
from datasets.karpathy import TRUNCATED_IMAGES
from errors import ConfigError
from modules.heads import HEAD_NAMES
from modules.levels import resolve_num_levels
from evaluation.protocol import VALIDATION_PROTOCOLS

# The released hyper-parameters per encoder pair (ESL/X-Dim region code; ESL-CLIP code).
PRESETS = {
    "region_bert": dict(
        sim_head="xdim", batch_size=128, num_epochs=30, learning_rate=5e-4, lr_update=15,
        weight_decay=1e-4, adam_eps=1e-8, grad_clip=2.0, evals_per_epoch=1, loss="hinge",
        schedule="step", optimizer="adamw", last_batch="drop", val_protocol="first_1k", clip_truncation="released",
        clip_text_cleaning="released", truncated_images="refuse"),
    "clip": dict(
        sim_head="esl_h", batch_size=64, num_epochs=15, weight_decay=0.2, adam_eps=1e-6,
        grad_clip=1.0, evals_per_epoch=4, loss="infonce", schedule="cosine", optimizer="bert_adamw",
        last_batch="keep", clip_truncation="released", clip_text_cleaning="released"),
}

# Keys that define the network; a checkpoint only resumes or loads into the same values.
MODEL_KEYS = ("encoders", "sim_head", "embed_size", "img_dim", "kernel_size", "esl_levels", "cosine_pool")


class Config(SimpleNamespace):
    """A resolved run configuration (attribute access, JSON round-trip)."""

    def to_dict(self) -> dict:
        return dict(vars(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def model_signature(self) -> dict:
        return {key: getattr(self, key, None) for key in MODEL_KEYS}


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data_path", default=None,
                       help="folder holding <data_name>/ (precomputed regions), e.g. data/Flickr30K")
    group.add_argument("--data_name", default=None, choices=["f30k_precomp", "coco_precomp"],
                       help="precomputed-region dataset (region_bert encoders)")
    group.add_argument("--dataset", default=None, choices=["f30k", "coco"],
                       help="raw-image dataset (clip encoders)")
    group.add_argument("--image_root", default=None,
                       help="Flickr30K image folder, or the COCO folder holding train2014/ and val2014/")
    group.add_argument("--ann_path", default=None,
                       help="Karpathy JSON file, or the folder holding dataset_flickr30k.json / "
                            "{train,dev,testall}_coco.json")
    group.add_argument("--truncated_images", default=None, choices=TRUNCATED_IMAGES,
                       help="raw images whose file is cut short: load = decode what is there (the released COCO "
                            "loader), refuse = unreadable (skipped in training, an error in evaluation) "
                            "[COCO: load; Flickr30K: refuse; evaluation: the checkpoint's]")
    group.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="data loader processes")


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    group.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"],
                       help="mixed precision for encoders and heads (CUDA; bf16 also on CPU)")
    group.add_argument("--tf32", default="off", choices=["off", "on"],
                       help="TF32 matmuls and convolutions on CUDA (faster, 10-bit mantissa); off keeps fp32")
    group.add_argument("--eval_batch_size", type=int, default=128, help="items per encoder batch at evaluation")
    group.add_argument("--eval_mem_gb", type=float, default=None,
                       help="memory budget for the intermediate tensors of one scoring shard "
                            "[CUDA: a quarter of the free GPU memory; CPU: cache-sized blocks]")


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train ESL-CLIP, ESL-region or X-Dim (any encoder pair x any similarity head).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--encoders", default="region_bert", choices=["region_bert", "clip"],
                       help="region_bert: BUTD regions + BERT words; clip: CLIP ViT image + text towers")
    model.add_argument("--sim_head", default=None, choices=HEAD_NAMES,
                       help="similarity head [region_bert: xdim; clip: esl_h]")
    model.add_argument("--embed_size", type=int, default=None,
                       help="joint space size [xdim: 1024, esl/cosine: 512; clip: its projection size]")
    model.add_argument("--img_dim", type=int, default=2048, help="region feature size")
    model.add_argument("--kernel_size", type=int, default=2, help="ESL measure-unit size k")
    model.add_argument("--esl_levels", type=int, default=None,
                       help="ESL levels above the input [8, fewer when embed_size is not divisible by k**8]")
    model.add_argument("--cosine_pool", default="mean", choices=["mean", "max"],
                       help="pooling of local features for --sim_head cosine")
    model.add_argument("--clip_truncation", default=None, choices=CLIP_TRUNCATIONS,
                       help="CLIP captions longer than 77 tokens: released = the first 77 ids (end token lost, "
                            "pooling at the start token, as the released ESL-CLIP code); keep_eot = 76 ids and the "
                            "end token [released]")
    model.add_argument("--clip_text_cleaning", default=None, choices=CLIP_TEXT_CLEANINGS,
                       help="CLIP captions: released = ftfy and HTML unescaping first, as the released tokeniser; "
                            "tokenizer = the tokenizer's own normalisation only [released]")
    model.add_argument("--bert_path", default="bert-base-uncased", help="hub name or local BERT folder")
    model.add_argument("--clip_path", default="openai/clip-vit-base-patch16", help="hub name or local CLIP folder")
    add_data_options(parser)

    train = parser.add_argument_group("training")
    train.add_argument("--num_epochs", type=int, default=None, help="[region: 30; clip: 15]")
    train.add_argument("--batch_size", type=int, default=None, help="global batch [region: 128; clip: 64]")
    train.add_argument("--learning_rate", type=float, default=5e-4, help="region systems' base lr")
    train.add_argument("--lr_update", type=int, default=15, help="region: lr x0.1 from this epoch on")
    train.add_argument("--clip_lr", type=float, default=1e-6, help="clip: lr of the CLIP towers")
    train.add_argument("--noclip_lr", type=float, default=3e-5, help="clip: lr of the head")
    train.add_argument("--warmup_proportion", type=float, default=0.1, help="clip: linear warm-up share of all steps")
    train.add_argument("--weight_decay", type=float, default=None, help="AdamW decay [region: 1e-4; clip: 0.2]")
    train.add_argument("--optimizer", default=None, choices=["adamw", "bert_adamw"],
                       help="adamw: torch's; bert_adamw: the original BERT AdamW (eps outside the bias correction, "
                            "decay after the step) [region: adamw; clip: bert_adamw, as released]")
    train.add_argument("--grad_clip", type=float, default=None, help="grad-norm clip [region: 2.0; clip: 1.0]")
    train.add_argument("--loss", default=None, choices=["hinge", "infonce"],
                       help="[region: hinge (VSE++ after warm-up); clip: infonce with CLIP's logit scale]")
    train.add_argument("--margin", type=float, default=0.2, help="hinge margin")
    train.add_argument("--max_violation", action="store_true",
                       help="hardest negatives from the first epoch (default: after the warm-up epochs)")
    train.add_argument("--vse_mean_warmup_epochs", type=int, default=1,
                       help="epochs of summed hinge violations before hardest negatives")
    train.add_argument("--region_drop", type=float, default=0.2, help="train: probability of dropping a region")
    train.add_argument("--word_aug", type=float, default=0.2,
                       help="train: probability of altering a word (50%% [MASK], 10%% random, 40%% delete)")
    train.add_argument("--last_batch", default=None, choices=["keep", "drop"],
                       help="the incomplete last batch of an epoch: trained and counted in the schedule, or "
                            "dropped [region: drop; clip: keep, as released]")
    train.add_argument("--evals_per_epoch", type=int, default=None, help="validations per epoch [region: 1; clip: 4]")
    train.add_argument("--val_every", type=int, default=1, help="validate every N epochs")
    train.add_argument("--val_split", default=None, help="validation split [dev; Flickr30K raw images: val]")
    train.add_argument("--val_protocol", default=None, choices=VALIDATION_PROTOCOLS,
                       help="model selection: first_1k = rSum of the first 1,000 validation images; last_fold = "
                            "the whole split scored in 5 folds (COCO dev: 5 x 1,000), selected on the last fold's "
                            "rSum; mean_5fold = on the folds' mean rSum [COCO clip: last_fold; others: first_1k, "
                            "as released]")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--output_dir", default="runs/exp", help="checkpoints, config, logs and TensorBoard")
    train.add_argument("--resume", default="",
                       help="checkpoint to continue from, or 'auto' for <output_dir>/checkpoint_last.pth")
    train.add_argument("--init_from", default="",
                       help="start from the weights of this checkpoint (ours or a released one) with a fresh optimiser "
                            "and schedule; the model options come from it")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in a non-empty --output_dir, replacing its checkpoints, config, log and "
                            "TensorBoard scalars (without it, a used folder is only continued with --resume)")
    train.add_argument("--save_every_steps", type=int, default=500,
                       help="also write checkpoint_last every N steps (0: only at evaluations and epoch ends)")
    train.add_argument("--max_steps", type=int, default=0,
                       help="stop (with a checkpoint) after this many optimiser steps in total; 0: no limit")
    train.add_argument("--log_every", type=int, default=50, help="TensorBoard / log-file interval in steps")
    _add_runtime_options(parser)
    return parser


def eval_parser(description: str, default_split: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="our checkpoint (model_best.pth, checkpoint_last.pth) or an authors' released file; "
                             "several: an ensemble, whose score matrices are averaged")
    parser.add_argument("--weights", type=float, nargs="+", default=None,
                        help="ensemble weights, one per checkpoint (normalised to sum 1) [equal]")
    parser.add_argument("--split", default=default_split)
    parser.add_argument("--bert_path", default=None, help="override the BERT tokenizer/architecture path")
    parser.add_argument("--clip_path", default=None, help="override the CLIP tokenizer path")
    parser.add_argument("--img_dim", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clip_truncation", default=None, choices=CLIP_TRUNCATIONS,
                        help="CLIP captions longer than 77 tokens (see train.py --help) [the checkpoint's; released "
                             "files: released]")
    parser.add_argument("--clip_text_cleaning", default=None, choices=CLIP_TEXT_CLEANINGS,
                        help="CLIP caption cleaning (see train.py --help) [the checkpoint's; released files: released]")
    parser.add_argument("--save_sims", default=None,
                        help="write the image x caption score matrix here (.npy) and its metrics next to it (.json)")
    parser.add_argument("--save_ranks", default=None,
                        help="write, for every image and caption query, its rank and top-10 items with scores (.json)")
    parser.add_argument("--extended", action="store_true",
                        help="COCO 5K: add ECCV Caption mAP@R / R-Precision / R@1 and CxC R@1 (needs eccv_caption)")
    parser.add_argument("--ids_file", default=None,
                        help="--extended: COCO caption ids (or image ids) of the rows, one per line "
                             "[coco_precomp: <split>_ids.txt]")
    add_data_options(parser)
    _add_runtime_options(parser)
    return parser


def explicit_options(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The options the command line actually gave (as opposed to their defaults)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.nargs == 0:
            probe.add_argument(*action.option_strings, dest=action.dest, action="store_true",
                               default=argparse.SUPPRESS)
        else:
            probe.add_argument(*action.option_strings, dest=action.dest, nargs=action.nargs,
                               default=argparse.SUPPRESS)
    return set(vars(probe.parse_known_args(argv)[0]))


def take_model_options(values: dict, explicit: set[str], init_cfg, path: str) -> None:
    """--init_from: the network is the checkpoint's; an option that says otherwise is an error."""
    for key in MODEL_KEYS + ("image_size",):
        saved = getattr(init_cfg, key, None)
        if key in explicit and values.get(key) != saved:
            raise ConfigError(f"--{key} {values.get(key)} contradicts --init_from {path}, whose {key} is {saved}; "
                              f"drop --{key} or start from another checkpoint")
        values[key] = saved


def resolve_train_config(args: argparse.Namespace, init_cfg=None, explicit: set[str] = frozenset()) -> Config:
    """Fill encoder-pair presets, derive what depends on other options, reject combinations
    that cannot work. With `init_cfg` (the config of --init_from) the model options are its own."""
    values = dict(vars(args))
    if init_cfg is not None:
        take_model_options(values, explicit, init_cfg, values["init_from"])
    preset = PRESETS[values["encoders"]]
    for key, default in preset.items():
        if values.get(key) is None:
            values[key] = default
    check_ranges(values, TRAIN_RANGES + RUNTIME_RANGES)

    if values["encoders"] == "region_bert":
        if not values["data_path"] or not values["data_name"]:
            raise ConfigError("region_bert training needs --data_path and --data_name (f30k_precomp or coco_precomp)")
        if values["embed_size"] is None:
            values["embed_size"] = 1024 if values["sim_head"] == "xdim" else 512
        values["val_split"] = values["val_split"] or "dev"
    else:
        if not values["dataset"] or not values["image_root"] or not values["ann_path"]:
            raise ConfigError("clip training needs --dataset (f30k or coco), --image_root and --ann_path")
        if init_cfg is None:
            projection, values["image_size"] = _clip_sizes(values["clip_path"])
            if values["embed_size"] is None:
                values["embed_size"] = projection
        values["val_split"] = values["val_split"] or ("val" if values["dataset"] == "f30k" else "dev")
        if values["val_protocol"] is None:
            values["val_protocol"] = "last_fold" if values["dataset"] == "coco" else "first_1k"
        if values["truncated_images"] is None:
            values["truncated_images"] = "load" if values["dataset"] == "coco" else "refuse"

    if values["loss"] == "infonce" and values["encoders"] != "clip":
        raise ConfigError("--loss infonce needs CLIP's logit scale; use --loss hinge with region_bert encoders")
    if values["sim_head"] in ("esl_h", "esl_a"):
        values["esl_levels"] = resolve_num_levels(values["embed_size"], values["kernel_size"], values["esl_levels"])
    if values["val_split"] in ("test", "testall"):
        raise ConfigError(f"--val_split {values['val_split']}: the model would be selected on the test set, which "
                          "makes the reported test numbers optimistic; validate on dev (Flickr30K images: val)")
    if values["resume"] and values["overwrite"]:
        raise ConfigError("--resume continues a run and --overwrite replaces it; give one of them")

    if values["batch_size"] < 2:
        raise ConfigError("--batch_size must be at least 2: the losses need negatives in the batch")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if values["batch_size"] % world:
        raise ConfigError(f"--batch_size {values['batch_size']} (global) is not divisible by the {world} processes")
    if values["amp"] == "fp16" and not _cuda_requested(values["device"]):
        raise ConfigError("--amp fp16 needs CUDA (use --amp bf16 on CPU, or --amp off)")
    return Config(**values)


# (option, lowest, highest, whether the bounds are included); None: unbounded on that side
TRAIN_RANGES = [
    ("batch_size", 1, None, True), ("num_epochs", 1, None, True), ("evals_per_epoch", 1, None, True),
    ("val_every", 1, None, True), ("log_every", 1, None, True), ("embed_size", 1, None, True),
    ("img_dim", 1, None, True), ("max_steps", 0, None, True), ("save_every_steps", 0, None, True),
    ("lr_update", 0, None, True), ("vse_mean_warmup_epochs", 0, None, True), ("seed", 0, None, True),
    ("learning_rate", 0, None, False), ("clip_lr", 0, None, False), ("noclip_lr", 0, None, False),
    ("weight_decay", 0, None, True), ("grad_clip", 0, None, True), ("margin", 0, None, True),
    ("warmup_proportion", 0, 1, True), ("word_aug", 0, 1, True), ("region_drop", 0, 1, None),
]
RUNTIME_RANGES = [("workers", 0, None, True), ("eval_batch_size", 1, None, True), ("eval_mem_gb", 0, None, False)]


def check_ranges(values: dict, ranges) -> None:
    """Each option within its range (NaN never is); `None` for inclusive means [low, high)."""
    for key, low, high, inclusive in ranges:
        value = values.get(key)
        if value is None:
            continue
        above = value >= low if inclusive is not False else value > low
        below = high is None or (value <= high if inclusive else value < high)
        if not (above and below):
            if high is None:
                bound = f"at least {low}" if inclusive is not False else f"greater than {low}"
            else:
                bound = f"in [{low}, {high}]" if inclusive else f"in [{low}, {high})"
            raise ConfigError(f"--{key} must be {bound} (got {value})")


def _cuda_requested(device: str) -> bool:
    import torch
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def _clip_sizes(clip_path: str) -> tuple[int, int]:
    """(projection size, input image size) of a CLIP model, from its config alone."""
    from transformers import CLIPConfig
    from modules.backbones import resolve_backbone
    try:
        config = CLIPConfig.from_pretrained(resolve_backbone(clip_path, "--clip_path"))
        return config.projection_dim, config.vision_config.image_size
    except OSError as exc:
        raise ConfigError(f"--clip_path {clip_path}: no CLIP config found ({str(exc).splitlines()[0]})") from exc
