"""What an encoder pair is: everything the programs need to know about an image/text encoder pair,
asked of its spec instead of testing its name."""

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class EncoderPair:
    """A registered encoder pair (`--encoders NAME`).

    `text_kind` is the tokenizer family ('bert' or 'clip', see datasets.captions) and
    `backbone_option` the option naming its pretrained backbone folder; `data_options` locate its
    data (all needed to train or evaluate); `default_recipe` (config/recipes/) holds the released
    hyper-parameters that apply when no recipe is given; `head_lr_option` names the learning rate of
    the head's group."""

    name: str
    summary: str
    feature_kind: str                  # modules.heads.LOCAL or GLOBAL
    text_kind: str
    backbone_option: str
    data_options: tuple
    data_hint: str                     # how to give the data, for error messages
    options: tuple                     # its own options (config.schema.Option)
    default_recipe: str
    head_lr_option: str
    logit_scale: bool                  # its encoders carry a learnable logit scale (InfoNCE needs one)
    build_encoders: Callable           # (cfg, backbone_config: dict | None) -> encoders module
    text_tokens: Callable              # (backbone config dict) -> what a tokenizer must agree with
    text_positions: Callable           # (cfg) -> token positions of the pretrained text tower
    caption_encoder: Callable          # (cfg, tokenizer, positions) -> captions -> token ids
    train_dataset: Callable            # (cfg, caption_encoder) -> Dataset of training pairs (with set_epoch and
                                       # identity, what a resumed run must train on again)
    eval_split: Callable               # (cfg, split, max_images) -> (image set, captions, where)
    resolve: Callable                  # (values, given: set) -> None: derived options and checks
    caption_ids: Callable              # (cfg, split) -> (COCO caption ids of the split, source) for --extended
    input_files: Callable              # (cfg, split) -> the files a split is read from (never an output)
    coco: Callable                     # (cfg) -> whether the data is MS-COCO (--extended, testall.py)
    collection: Callable | None = None  # (cfg, path) -> (image Dataset, names): tools/retrieve.py index
    collection_option: str = ""        # the tools/retrieve.py index option `collection` reads (its help says what)
