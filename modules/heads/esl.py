"""The ESL heads (`esl_h` heuristic, `esl_a` adaptive): the region form on word/region features,
the CLIP form on global embeddings."""

from config.schema import MODEL, Option
from ..levels import resolve_num_levels
from .base import GLOBAL, LOCAL, HeadSpec
from .esl_clip import ESLClipHead
from .esl_region import ESLRegionHead

KERNEL_SIZE = Option("kernel_size", int, 2, "ESL measure-unit size k", MODEL)
LEVELS = Option("esl_levels", int, None, "ESL levels above the input [8, fewer when embed_size is not divisible "
                                         "by k**8]", MODEL)


def _resolve(values: dict) -> None:
    values["esl_levels"] = resolve_num_levels(values["embed_size"], values["kernel_size"], values["esl_levels"])


def _builder(strategy: str):
    def build(cfg, feature_kind: str):
        head_class = ESLRegionHead if feature_kind == LOCAL else ESLClipHead
        return head_class(cfg.embed_size, cfg.kernel_size, cfg.esl_levels, strategy)
    return build


H_SPEC = HeadSpec("esl_h", "ESL, heuristic dimensional selective masks", feature_kinds=(LOCAL, GLOBAL),
             build=_builder("heuristic"), options=(KERNEL_SIZE, LEVELS), resolve=_resolve)
A_SPEC = HeadSpec("esl_a", "ESL, adaptive dimensional selective masks", feature_kinds=(LOCAL, GLOBAL),
             build=_builder("adaptive"), options=(KERNEL_SIZE, LEVELS), resolve=_resolve)
