"""The core options of train.py / test.py / testall.py, and the schema of every option.

Options that belong to an encoder pair (its data, backbone, augmentation) or to a head are declared
in `config.catalogue`, which their specs read; `all_options` gathers them with the core ones below.
A default of None is decided by the recipe, the encoder pair or the head (config.resolve).
"""

import os

from config import catalogue
from config.catalogue import VALIDATION_PROTOCOLS
from config.schema import COMMAND, MODEL, RUNTIME, Config, Option

# Upper bounds: far above any real run, low enough that a mistyped value is one line, not a
# traceback, an overflow or thousands of processes.
MANY = 100_000                                  # epochs and epoch counts
MANY_STEPS = 10**9                              # step counts
MAX_WORKERS = max(64, 8 * (os.cpu_count() or 1))  # loader processes: more than 8 a core only wait

TRAIN = (
    Option("embed_size", int, None, "joint space size [the head's on region features (xdim 1024, others 512); "
                                    "clip: its projection size]", MODEL, low=1, high=1 << 16),
    Option("num_epochs", int, None, "epochs [region: 30; clip: 15]", low=1, high=MANY),
    Option("batch_size", int, None, "global batch [region: 128; clip: 64]", low=1, high=1 << 20),
    Option("learning_rate", float, 5e-4, "region systems' base lr", low=0, high=1e6, closed="(]"),
    Option("lr_update", int, 15, "step schedule: lr x0.1 from this epoch on", low=0, high=MANY),
    Option("schedule", str, None, "step (x0.1 at lr_update) or cosine (linear warm-up, then half a cosine) "
                                  "[region: step; clip: cosine]", choices=("step", "cosine")),
    Option("warmup_proportion", float, 0.1, "cosine schedule: linear warm-up share of all steps", low=0, high=1),
    Option("optimizer", str, None, "adamw: torch's; bert_adamw: the original BERT AdamW (eps outside the bias "
                                   "correction, decay after the step) [region: adamw; clip: bert_adamw, as released]",
           choices=("adamw", "bert_adamw")),
    Option("weight_decay", float, None, "AdamW decay [region: 1e-4; clip: 0.2]", low=0, high=1),
    Option("adam_eps", float, None, "AdamW eps [region: 1e-8; clip: 1e-6]", low=0, high=1, closed="(]"),
    Option("grad_clip", float, None, "grad-norm clip, 0 for none [region: 2.0; clip: 1.0]", low=0, high=1e6),
    Option("margin", float, 0.2, "hinge margin", low=0, high=100),
    Option("global_loss_weight", float, 0.0, "W > 0 adds W times the loss of the cosine of pooled region and word "
                                             "features, training a global stage for two-stage retrieval "
                                             "(test.py --rerank_k) in the same checkpoint; 0 is the released "
                                             "training", low=0, high=1e3),
    Option("max_violation", bool, False, "hardest negatives from the first epoch (default: after the warm-up epochs)"),
    Option("vse_mean_warmup_epochs", int, 1, "epochs of summed hinge violations before hardest negatives", low=0,
           high=MANY),
    Option("last_batch", str, None, "the incomplete last batch of an epoch: trained and counted in the schedule, "
                                    "or dropped [region: drop; clip: keep, as released]", choices=("keep", "drop")),
    Option("evals_per_epoch", int, None, "validations per epoch [region: 1; clip: 4]", low=1, high=1000),
    Option("val_every", int, 1, "validate every N epochs", low=1, high=MANY),
    Option("val_split", str, None, "validation split [dev; Flickr30K raw images: val]"),
    Option("val_protocol", str, None, "model selection: first_1k = rSum of the first 1,000 validation images; "
                                      "last_fold = the whole split scored in 5 folds (COCO dev: 5 x 1,000), selected "
                                      "on the last fold's rSum; mean_5fold = on the folds' mean rSum [COCO clip: "
                                      "last_fold; others: first_1k, as released]", choices=VALIDATION_PROTOCOLS),
    Option("seed", int, 0, "seed of the initialisation, the batch order and the augmentation", low=0,
           high=2**31 - 1),
    Option("amp", str, "off", "mixed precision for encoders and heads (CUDA; bf16 also on CPU)",
           choices=("off", "bf16", "fp16")),
    Option("tf32", str, "off", "TF32 matmuls and convolutions on CUDA (faster, 10-bit mantissa); off keeps fp32",
           choices=("off", "on")),
    Option("output_dir", str, "runs/exp", "checkpoints, config, logs and TensorBoard", COMMAND),
    Option("recipe", str, None, "a released recipe (config/recipes/NAME.json, or a path to a recipe file); "
                                "options given on the command line override it; --list_recipes shows them", COMMAND),
    Option("resume", str, "", "checkpoint to continue from, or 'auto' for <output_dir>/checkpoint_last.pth",
           COMMAND),
    Option("init_from", str, "", "start from the weights of this checkpoint (ours or a released one) with a fresh "
                                 "optimiser and schedule; the model options come from it", COMMAND),
    Option("overwrite", bool, False, "start afresh in a non-empty --output_dir, replacing its checkpoints, "
                                     "config, log and TensorBoard scalars (without it, a used folder is only "
                                     "continued with --resume)", COMMAND),
    Option("save_every_steps", int, 500, "also write checkpoint_last every N steps (0: only at evaluations and "
                                         "epoch ends)", RUNTIME, low=0, high=MANY_STEPS),
    Option("max_steps", int, 0, "stop (with a checkpoint) after this many optimiser steps in total; 0: no limit",
           RUNTIME, low=0, high=MANY_STEPS),
    Option("log_every", int, 50, "TensorBoard / log-file interval in steps", RUNTIME, low=1,
           high=MANY_STEPS),
)

RUNTIME_OPTIONS = (
    Option("workers", int, min(4, os.cpu_count() or 1), "data loader processes", RUNTIME, low=0, high=MAX_WORKERS),
    Option("device", str, "auto", "auto (CUDA when present), cpu, cuda, cuda:N", RUNTIME),
    Option("eval_batch_size", int, 128, "items per encoder batch at evaluation", RUNTIME, low=1, high=1 << 20),
    Option("eval_mem_gb", float, None, "memory budget for the intermediate tensors of one scoring shard "
                                       "[CUDA: a quarter of the free GPU memory; CPU: cache-sized blocks]",
           RUNTIME, low=0, high=1 << 20, closed="(]"),
)

EVAL = (
    Option("checkpoint", str, None, "a model folder (runs/x/model_best), a hub name found in the HuggingFace cache "
                                    "(ORG/NAME or ORG/NAME@REVISION), checkpoint_last.pth or an authors' released "
                                    "file; several: an ensemble, whose score matrices are averaged",
           COMMAND, nargs="+"),
    Option("weights", float, None, "ensemble weights, one per checkpoint (normalised to sum 1) [equal]", COMMAND,
           nargs="+", low=0, high=1e6, closed="(]"),
    Option("save_sims", str, None, "write the image x caption score matrix here (.npy) and its metrics and "
                                   "provenance next to it (.json)", COMMAND),
    Option("save_ranks", str, None, "write, for every image and caption query, its rank and top-10 items with "
                                    "scores (.json)", COMMAND),
    Option("extended", bool, False, "COCO 5K: add ECCV Caption mAP@R / R-Precision / R@1 and CxC R@1 (needs "
                                    "eccv_caption)", COMMAND),
    Option("ids_file", str, None, "--extended: COCO caption ids (or image ids) of the rows, one per line "
                                  "[coco_precomp: <split>_ids.txt]", COMMAND),
    Option("overwrite", bool, False, "replace output files that exist already", COMMAND),
    Option("rerank_k", int, None, "two-stage retrieval: the global stage shortlists K captions per image and K "
                                  "images per caption, and the head scores only those pairs", COMMAND, low=1,
           high=1 << 24),
    Option("shortlist", str, None, "--rerank_k: the checkpoint whose global embeddings shortlist (a cosine or "
                                   "ESL-CLIP model) [the model's own: exact for ESL-CLIP and cosine, pooled features "
                                   "for X-Dim and ESL-region]", COMMAND),
    Option("first_stage_index", str, "flat", "--rerank_k: flat = exact inner-product search; ivf, hnsw = "
                                             "approximate (their recall against exact search is reported)",
           COMMAND, choices=("flat", "ivf", "hnsw")),
    Option("compare_sims", str, None, "--rerank_k: the exhaustive score matrix of the same checkpoint and split "
                                      "(saved with --save_sims), to report the recall two-stage loses", COMMAND),
)

# The tools' own numbers (tools/*.py, the demo); the options they share with train.py / test.py
# are taken from above (config.parsers.add_schema_options).
TOOLS = (
    Option("top", int, 5, "results shown per query", COMMAND, low=1, high=10_000),
    Option("item", int, None, "position of the image in the index", COMMAND, low=0, high=2**40),
    Option("queries", int, 8, "sampled queries of each kind", COMMAND, low=1, high=10_000),
    Option("k", int, None, "shortlist sizes", COMMAND, nargs="+", low=1, high=1 << 24),
    Option("epochs", int, None, "[regions: 4; clip: 10]", COMMAND, low=1, high=MANY),
    Option("train_images", int, 2000, "generated training images", COMMAND, low=1, high=10**6),
    Option("test_images", int, 100, "generated images of each evaluation split", COMMAND, low=1, high=10**6),
    Option("region_dim", int, 256, "generated region feature size (BUTD features are 2048-d)", COMMAND, low=1,
           high=1 << 16),
)


# Options added after checkpoints were first written, with the behaviour those checkpoints were
# trained with (a saved config that lacks them predates the option).
LEGACY_VALUES = {"clip_truncation": "keep_eot", "clip_text_cleaning": "tokenizer", "truncated_images": "refuse",
                 "last_batch": "drop", "val_protocol": "first_1k", "global_loss_weight": 0.0}


def model_choices() -> tuple[Option, ...]:
    """--encoders, --sim_head, --loss and --layout, whose choices are the registries (declared in
    config.catalogue, which registering a spec extends)."""
    pairs, heads, losses, layouts = catalogue.PAIRS, catalogue.HEADS, catalogue.LOSSES, catalogue.LAYOUTS
    return (Option("encoders", str, "region_bert", "; ".join(f"{name}: {pair.summary}" for name, pair in pairs.items()),
                   MODEL, choices=tuple(pairs)),
            Option("sim_head", str, None, "; ".join(f"{name}: {head.summary}" for name, head in heads.items())
                   + " [region_bert: xdim; clip: esl_h]", MODEL, choices=tuple(heads)),
            Option("loss", str, None, " or ".join(spec.summary for spec in losses.values())
                   + " [the encoder pair's recipe: region hinge, clip infonce]", choices=tuple(losses)),
            Option("layout", str, None, "; ".join(f"{name}: {layout.summary}" for name, layout in layouts.items())
                   + " [the one the data options select: --data_path precomp, --dataset f30k karpathy, coco coco]",
                   choices=tuple(layouts), evaluation=True))


def owned_options() -> list[tuple[str, tuple]]:
    """(title, options) of every encoder pair, data layout and head, for the parsers' groups;
    layouts or heads that share their options (karpathy and coco, esl_h and esl_a) share a group."""
    groups = [(f"{name} encoders ({pair.summary})", pair.options) for name, pair in catalogue.PAIRS.items()]
    for kind, table in (("layout", catalogue.LAYOUTS), ("head", catalogue.HEADS)):
        shared: dict[tuple, list[str]] = {}
        for name, declared in table.items():
            if declared.options:
                shared.setdefault(declared.options, []).append(name)
        groups += [(f"{', '.join(names)} {kind}{'s' if len(names) > 1 else ''}", options)
                   for options, names in shared.items()]
    return groups


def all_options() -> dict[str, Option]:
    """Every option a training config holds, by name (an option shared by two heads is declared once)."""
    options = {}
    for option in (*model_choices(), *TRAIN, *RUNTIME_OPTIONS,
                   *(option for _, group in owned_options() for option in group)):
        if options.get(option.name, option) != option:
            raise ValueError(f"option {option.name} is declared twice, differently")
        options[option.name] = option
    return options


def config_from_saved(saved: dict, legacy: bool = True) -> Config:
    """A checkpoint's config, completed for the options it predates: with the behaviour those
    checkpoints had (LEGACY_VALUES, for our older checkpoints), then the schema's defaults."""
    values = {name: option.default for name, option in all_options().items()}
    return Config(**{**values, **(LEGACY_VALUES if legacy else {}), **saved})
