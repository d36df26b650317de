"""What an encoder pair is: everything the programs need to know about an image/text encoder pair,
asked of its spec instead of testing its name."""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class EncoderPair:
    """A registered encoder pair (`--encoders NAME`).

    `text_kind` is the tokenizer family (datasets.captions) and `backbone_option` the option naming
    its pretrained backbone folder. It `reads` region features or image files (datasets.layouts:
    REGIONS or IMAGES), every registered layout that delivers them, images through its
    `image_transform`; `default_layout` names the layout its data options select when --layout is
    not given. `default_recipe` (config/recipes/) holds the released hyper-parameters that apply when
    no recipe is given; `head_lr_option` names the learning rate of the head's group."""

    name: str
    summary: str
    feature_kind: str                  # modules.heads.LOCAL or GLOBAL
    text_kind: str
    backbone_option: str
    options: tuple                     # its own options (config.schema.Option)
    default_recipe: str
    head_lr_option: str
    logit_scale: bool                  # its encoders carry a learnable logit scale (InfoNCE needs one)
    reads: str                         # datasets.layouts.REGIONS or IMAGES
    default_layout: Callable           # (values: dict) -> the layout its data options select
    build_encoders: Callable           # (cfg, backbone_config: dict | None) -> encoders module
    text_tokens: Callable              # (backbone config dict) -> what a tokenizer must agree with
    text_positions: Callable           # (cfg) -> token positions of the pretrained text tower
    caption_encoder: Callable          # (cfg, tokenizer, positions) -> captions -> token ids
    resolve: Callable                  # (values, given: set) -> None: derived options and checks
    image_transform: Callable = lambda cfg: None  # (cfg) -> PIL image -> tensor (IMAGES), None for REGIONS
    collection: Callable | None = None  # (cfg, path) -> (image Dataset, names): tools/retrieve.py index
    collection_option: str = ""        # the tools/retrieve.py index option `collection` reads (its help says what)
