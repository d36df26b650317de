"""Encoder pairs, registered by name for `--encoders`: each spec (pairs.base.EncoderPair) knows its
networks, tokenizer family, backbone options, what images it reads and how it preprocesses them,
so that no other code tests a pair's name. A model is an encoder pair x a similarity head
(`build_model`); its data is read through a layout (datasets.layouts) that delivers what the pair
reads."""

from config import catalogue
from config.catalogue import Declared
from datasets.layouts import LAYOUTS, EvalSplit, DataLayout, layout_named
from errors import ConfigError, DataError
from modules.heads import build_head
from modules.model import Matcher
from .base import EncoderPair

PAIRS: dict[str, EncoderPair] = {}


def register_pair(pair: EncoderPair) -> EncoderPair:
    """A pair, declared for the command line (config.catalogue) unless it is already."""
    PAIRS[pair.name] = pair
    catalogue.PAIRS.setdefault(pair.name, Declared(pair.name, pair.summary, pair.options))
    return pair


for _declared in list(catalogue.PAIRS.values()):
    register_pair(catalogue.load_code(_declared))


def pair_of(cfg) -> EncoderPair:
    pair = PAIRS.get(cfg.encoders)
    if pair is None:
        raise ConfigError(f"unknown encoder pair {cfg.encoders!r} (choose {', '.join(PAIRS)})")
    return pair


def layout_for(pair: EncoderPair, values: dict) -> DataLayout:
    """The layout a config reads: --layout, or the one the pair's data options select; it must
    deliver what the pair reads."""
    name = values.get("layout") or pair.default_layout(values)
    if name is None:
        hints = "; ".join(f"--layout {layout.name}: {layout.hint}" for layout in LAYOUTS.values()
                          if layout.images == pair.reads)
        raise ConfigError(f"give the data of the {pair.name} encoders ({hints})")
    layout = layout_named(name)
    if layout.images != pair.reads:
        raise ConfigError(f"--layout {layout.name} delivers {layout.images}, but the {pair.name} encoders read "
                          f"{pair.reads}")
    return layout


def layout_of(cfg) -> DataLayout:
    return layout_for(pair_of(cfg), vars(cfg))


def build_model(cfg, backbone_config: dict | None = None) -> Matcher:
    """The model a config describes. With `backbone_config` (a saved backbone config dict) only
    the architecture is built, for weights that come from a checkpoint; otherwise the backbone's
    pretrained weights are loaded from the pair's backbone option (--bert_path / --clip_path)."""
    pair = pair_of(cfg)
    encoders = pair.build_encoders(cfg, backbone_config)
    return Matcher(encoders, build_head(cfg, encoders.feature_kind, pair.name))


def train_dataset(cfg, caption_encoder):
    """The training pairs of a config: its layout's train split, images as its pair reads them."""
    return layout_of(cfg).train_dataset(cfg, caption_encoder, pair_of(cfg).image_transform(cfg))


def load_eval_split(cfg, split: str, max_images: int | None = None, folds: int = 1) -> EvalSplit:
    """A split to evaluate, each image once with its captions consecutive, every file checked;
    `folds` > 1 requires the images to split into that many equal folds."""
    data = layout_of(cfg).eval_split(cfg, split, max_images, pair_of(cfg).image_transform(cfg))
    if len(data.images) == 0:
        raise DataError(f"{data.where} has no images to evaluate")
    if len(data.images) % folds:
        raise DataError(f"{data.where} has {len(data.images)} images, which do not split into {folds} equal folds "
                        f"(COCO testall has 5,000); use test.py for a single split")
    return data


__all__ = ["PAIRS", "EncoderPair", "build_model", "layout_for", "layout_of", "load_eval_split", "pair_of",
           "register_pair", "train_dataset"]
