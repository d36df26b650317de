"""The ESL heads (`esl_h` heuristic, `esl_a` adaptive): the region form on word/region features,
the CLIP form on global embeddings."""

from config.catalogue import HEADS as DECLARED
from ..levels import resolve_num_levels
from .base import GLOBAL, LOCAL, HeadSpec
from .esl_clip import ESLClipHead
from .esl_region import ESLRegionHead


def _resolve(values: dict) -> None:
    values["esl_levels"] = resolve_num_levels(values["embed_size"], values["kernel_size"], values["esl_levels"])


def _builder(strategy: str):
    def build(cfg, feature_kind: str):
        head_class = ESLRegionHead if feature_kind == LOCAL else ESLClipHead
        return head_class(cfg.embed_size, cfg.kernel_size, cfg.esl_levels, strategy)
    return build


H_SPEC = HeadSpec(DECLARED["esl_h"].name, DECLARED["esl_h"].summary, feature_kinds=(LOCAL, GLOBAL),
                  build=_builder("heuristic"), options=DECLARED["esl_h"].options, resolve=_resolve)
A_SPEC = HeadSpec(DECLARED["esl_a"].name, DECLARED["esl_a"].summary, feature_kinds=(LOCAL, GLOBAL),
                  build=_builder("adaptive"), options=DECLARED["esl_a"].options, resolve=_resolve)
