"""Encoder pairs, registered by name for `--encoders`: each spec (pairs.base.EncoderPair) knows its
networks, tokenizer family, backbone and data options, datasets and defaults, so that no other code
tests a pair's name. A model is an encoder pair x a similarity head (`build_model`)."""

from errors import ConfigError, DataError
from modules.heads import build_head
from modules.model import Matcher
from . import clip, region_bert
from .base import EncoderPair

PAIRS: dict[str, EncoderPair] = {}


def register_pair(pair: EncoderPair) -> EncoderPair:
    PAIRS[pair.name] = pair
    return pair


register_pair(region_bert.PAIR)
register_pair(clip.PAIR)


def pair_of(cfg) -> EncoderPair:
    pair = PAIRS.get(cfg.encoders)
    if pair is None:
        raise ConfigError(f"unknown encoder pair {cfg.encoders!r} (choose {', '.join(PAIRS)})")
    return pair


def build_model(cfg, backbone_config: dict | None = None) -> Matcher:
    """The model a config describes. With `backbone_config` (a saved backbone config dict) only
    the architecture is built, for weights that come from a checkpoint; otherwise the backbone's
    pretrained weights are loaded from the pair's backbone option (--bert_path / --clip_path)."""
    pair = pair_of(cfg)
    encoders = pair.build_encoders(cfg, backbone_config)
    return Matcher(encoders, build_head(cfg, encoders.feature_kind, pair.name))


def load_eval_split(cfg, split: str, max_images: int | None = None, folds: int = 1):
    """(image set, captions) of a split, each image once with its 5 captions consecutive, every
    file checked; `folds` > 1 requires the images to split into that many equal folds."""
    image_set, captions, where = pair_of(cfg).eval_split(cfg, split, max_images)
    if len(image_set) == 0:
        raise DataError(f"{where} has no images to evaluate")
    if len(image_set) % folds:
        raise DataError(f"{where} has {len(image_set)} images, which do not split into {folds} equal folds "
                        f"(COCO testall has 5,000); use test.py for a single split")
    return image_set, captions


__all__ = ["PAIRS", "EncoderPair", "build_model", "load_eval_split", "pair_of", "register_pair"]
