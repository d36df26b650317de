"""Similarity heads, registered by name for `--sim_head` (timm-style: a name maps to a spec that
builds the head from the config with its own options).

A new head is its module (the class, its HeadSpec) plus its declaration in config.catalogue (name,
summary, options, where its HeadSpec is); the command-line options, recipes, checkpoints and tests
pick it up from the registry."""

from config import catalogue
from config.catalogue import Declared
from errors import ConfigError
from .base import GLOBAL, LOCAL, HeadSpec, SimilarityHead
from .cosine import CosineHead
from .esl_clip import ESLClipHead
from .esl_region import ESLRegionHead
from .xdim import XDimHead

HEADS: dict[str, HeadSpec] = {}


def register_head(spec: HeadSpec) -> HeadSpec:
    """A head, declared for the command line (config.catalogue) unless it is already."""
    HEADS[spec.name] = spec
    catalogue.HEADS.setdefault(spec.name, Declared(spec.name, spec.summary, spec.options))
    return spec


for _declared in list(catalogue.HEADS.values()):
    register_head(catalogue.load_code(_declared))


def build_head(cfg, feature_kind: str, encoders_name: str) -> SimilarityHead:
    """The head `cfg.sim_head` for features of `feature_kind` (ESL has a local and a global form)."""
    spec = HEADS.get(cfg.sim_head)
    if spec is None:
        raise ConfigError(f"unknown similarity head {cfg.sim_head!r} (choose {', '.join(HEADS)})")
    if feature_kind not in spec.feature_kinds:
        fitting = [name for name, other in HEADS.items() if feature_kind in other.feature_kinds]
        choices = ", ".join(fitting[:-1]) + f" or {fitting[-1]}" if len(fitting) > 1 else fitting[0]
        raise ConfigError(f"--sim_head {cfg.sim_head} needs {' or '.join(spec.feature_kinds)} features, but the "
                          f"{encoders_name} encoders give {feature_kind} ones; use {choices}")
    return spec.build(cfg, feature_kind)


__all__ = ["GLOBAL", "LOCAL", "HEADS", "HeadSpec", "SimilarityHead", "build_head", "register_head",
           "CosineHead", "ESLClipHead", "ESLRegionHead", "XDimHead"]
