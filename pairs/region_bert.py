"""region_bert: precomputed BUTD regions (36 x 2048 per image) and BERT-base words, the encoder pair
of ESL-region and X-Dim."""

import os

from transformers import BertConfig, BertTokenizer

from config.catalogue import REGION_BERT as DECLARED
from datasets.captions import BertCaptionEncoder, TokenizerFamily, register_tokenizer_family
from datasets.layouts import PRECOMP, REGIONS
from datasets.precomp import RegionFileSet
from detector.record import regions_record
from modules.backbones import resolve_backbone
from modules.heads import HEADS, LOCAL
from modules.region_bert import RegionBertEncoders
from modules.text_encoder import bert_text_tokens, build_bert
from .base import EncoderPair


TOKENIZERS = register_tokenizer_family(TokenizerFamily(
    "bert", "--bert_path", (("vocab.txt",), ("tokenizer.json",)), BertTokenizer,
    ("pad_token", "cls_token", "sep_token", "mask_token", "unk_token"), pad_masked=True))


def build_encoders(cfg, backbone_config: dict | None = None) -> RegionBertEncoders:
    return RegionBertEncoders(cfg.img_dim, cfg.embed_size, build_bert(cfg.bert_path, config=backbone_config))


def text_positions(cfg) -> int:
    return BertConfig.from_pretrained(resolve_backbone(cfg.bert_path, "--bert_path")).max_position_embeddings


def caption_encoder(cfg, tokenizer, positions: int) -> BertCaptionEncoder:
    return BertCaptionEncoder(tokenizer, word_aug=cfg.word_aug, max_length=positions)


def resolve(values: dict, given: set) -> None:
    if values["embed_size"] is None:
        values["embed_size"] = HEADS[values["sim_head"]].embed_size


def collection(cfg, path: str):
    """A BUTD feature file (images x regions x dim), one item per row."""
    rows = RegionFileSet(path, cfg.img_dim)
    found = regions_record(path, len(rows))      # written by tools/extract_regions.py: the images' names
    if found is not None:
        return rows, [image["name"] for image in found[0]["images"]]
    return rows, [f"{os.path.basename(path)}[{row}]" for row in range(len(rows))]


PAIR = EncoderPair(
    name=DECLARED.name, summary=DECLARED.summary, feature_kind=LOCAL, text_kind=TOKENIZERS.name,
    backbone_option="bert_path", options=DECLARED.options, default_recipe="_region",
    logit_scale=False, head_lr_option="learning_rate", reads=REGIONS, default_layout=lambda values: PRECOMP.name,
    build_encoders=build_encoders, text_tokens=bert_text_tokens, text_positions=text_positions,
    caption_encoder=caption_encoder, resolve=resolve, collection=collection, collection_option="regions")
