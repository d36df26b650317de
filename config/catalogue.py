"""What exists: the encoder pairs, data layouts, similarity heads and losses, declared by name,
summary and options, with where each one's code lives, without importing it.

The command lines are built from these declarations before torch, transformers or the models are
imported, so that `--help`, `--list_recipes` and a mistyped or out-of-range option answer at once.
Each registry (pairs.PAIRS, datasets.layouts.LAYOUTS, modules.heads.HEADS, modules.losses.LOSSES)
loads the specs declared here, which take their name, summary and options from their declaration
(tests/test_cli_startup.py checks that the registries and this catalogue agree); adding one is its
code plus its declaration here. Like `config.schema`, this module imports nothing heavy.
"""

import importlib
from dataclasses import dataclass

from .schema import LOCATION, MODEL, TRAINING, Option

VALIDATION_PROTOCOLS = ("first_1k", "last_fold", "mean_5fold")
CLIP_TRUNCATIONS = ("released", "keep_eot")
CLIP_TEXT_CLEANINGS = ("released", "tokenizer")
TRUNCATED_IMAGES = ("load", "refuse")


@dataclass(frozen=True)
class Declared:
    """What the command line needs of an encoder pair, a data layout, a head or a loss: its name,
    summary and options; and `code`, where its spec lives ("package.module:ATTRIBUTE"), which its
    registry loads (a spec registered at run time has none: it is registered already)."""

    name: str
    summary: str
    options: tuple = ()
    code: str = ""


def load_code(declared: Declared):
    """The spec a declaration names; called by the registries (above this package) as they fill."""
    module, attribute = declared.code.split(":")
    return getattr(importlib.import_module(module), attribute)


REGION_BERT = Declared("region_bert", "BUTD regions + BERT words", code="pairs.region_bert:PAIR", options=(
    Option("bert_path", str, "bert-base-uncased", "hub name or local BERT folder (evaluation: must agree with the "
                                                  "checkpoint's tokenizer)", LOCATION, evaluation=True),
    Option("img_dim", int, 2048, "region feature size", MODEL, low=1, high=1 << 16, evaluation=True),
    Option("word_aug", float, 0.2, "train: probability of altering a word (50% [MASK], 10% random, 40% delete)",
           TRAINING, low=0, high=1),
))

CLIP = Declared("clip", "CLIP image and text towers", code="pairs.clip:PAIR", options=(
    Option("clip_path", str, "openai/clip-vit-base-patch16", "hub name or local CLIP folder (evaluation: a folder "
                                                             "with the tokenizer files is enough)",
           LOCATION, evaluation=True),
    Option("clip_truncation", str, "released", "captions longer than 77 tokens: released = the first 77 ids (end "
                                               "token lost, pooling at the start token, as the released ESL-CLIP "
                                               "code); keep_eot = 76 ids and the end token",
           TRAINING, choices=CLIP_TRUNCATIONS, evaluation=True),
    Option("clip_text_cleaning", str, "released", "released = ftfy and HTML unescaping first, as the released "
                                                  "tokeniser; tokenizer = the tokenizer's own normalisation only",
           TRAINING, choices=CLIP_TEXT_CLEANINGS, evaluation=True),
    Option("clip_lr", float, 1e-6, "lr of the CLIP towers", TRAINING, low=0, high=1e6, closed="(]"),
    Option("noclip_lr", float, 3e-5, "lr of the head", TRAINING, low=0, high=1e6, closed="(]"),
    Option("image_size", int, None, "input image size, from the CLIP config", MODEL, flag=False),
))

PAIRS = {pair.name: pair for pair in (REGION_BERT, CLIP)}

# Data layouts (datasets.layouts); the two raw-image layouts share their options.
PRECOMP = Declared("precomp", "precomputed regions: <data_path>/<data_name>/{split}_ims.npy + {split}_caps.txt",
                   code="datasets.layouts:PRECOMP", options=(
    Option("data_path", str, None, "folder holding <data_name>/ (precomputed regions), e.g. data/Flickr30K",
           LOCATION, evaluation=True),
    Option("data_name", str, None, "precomputed-region dataset", TRAINING, choices=("f30k_precomp", "coco_precomp"),
           evaluation=True),
    Option("region_drop", float, 0.2, "train: probability of dropping a region", TRAINING, low=0, high=1,
           closed="[)"),
))
RAW_IMAGES = (
    Option("dataset", str, None, "raw-image dataset: f30k = the karpathy layout, coco = the coco layout", TRAINING,
           choices=("f30k", "coco"), evaluation=True),
    Option("image_root", str, None, "Flickr30K image folder, or the COCO folder holding train2014/ and val2014/",
           LOCATION, evaluation=True),
    Option("ann_path", str, None, "Karpathy JSON file, or the folder holding dataset_flickr30k.json / "
                                  "{train,dev,testall}_coco.json", LOCATION, evaluation=True),
    Option("truncated_images", str, "refuse", "raw images whose file is cut short: load = decode what is there "
                                              "(the released COCO loader), refuse = unreadable (skipped in training, "
                                              "an error in evaluation) [COCO: load]",
           TRAINING, choices=TRUNCATED_IMAGES, evaluation=True),
)
KARPATHY = Declared("karpathy", "Flickr30K images with Karpathy's dataset_flickr30k.json (--dataset f30k)",
                    RAW_IMAGES, code="datasets.layouts:KARPATHY")
COCO = Declared("coco", "MS-COCO images (train2014/, val2014/) with {train,dev,testall}_coco.json (--dataset coco)",
                RAW_IMAGES, code="datasets.layouts:COCO")
LAYOUTS = {layout.name: layout for layout in (PRECOMP, KARPATHY, COCO)}

KERNEL_SIZE = Option("kernel_size", int, 2, "ESL measure-unit size k", MODEL, low=2, high=64)
ESL_LEVELS = Option("esl_levels", int, None, "ESL levels above the input [8, fewer when embed_size is not "
                                             "divisible by k**8]", MODEL, low=1, high=8)
COSINE_POOL = Option("cosine_pool", str, "mean", "pooling of local features for --sim_head cosine", MODEL,
                     choices=("mean", "max"))

HEADS = {head.name: head for head in (
    Declared("xdim", "X-Dim: sparse cross-dimensional dependency weights", code="modules.heads.xdim:HEAD_SPEC"),
    Declared("esl_h", "ESL, heuristic dimensional selective masks", (KERNEL_SIZE, ESL_LEVELS),
             code="modules.heads.esl:H_SPEC"),
    Declared("esl_a", "ESL, adaptive dimensional selective masks", (KERNEL_SIZE, ESL_LEVELS),
             code="modules.heads.esl:A_SPEC"),
    Declared("cosine", "plain cosine of pooled features (the VSE / CLIP baseline)", (COSINE_POOL,),
             code="modules.heads.cosine:HEAD_SPEC"),
)}

LOSSES = {loss.name: loss for loss in (
    Declared("hinge", "hinge (VSE++ after the warm-up epochs)", code="modules.losses:HINGE"),
    Declared("infonce", "infonce with CLIP's logit scale", code="modules.losses:INFONCE"),
)}
