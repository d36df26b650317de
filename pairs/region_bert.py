"""region_bert: precomputed BUTD regions (36 x 2048 per image) and BERT-base words, the encoder pair
of ESL-region and X-Dim."""

import os

from config.catalogue import REGION_BERT as DECLARED
from datasets.captions import BertCaptionEncoder
from datasets.precomp import (CAPTIONS_PER_IMAGE, PrecompImageSet, PrecompSplit, PrecompTrainDataset,
                              RegionFileSet)
from errors import ConfigError, DataError
from modules.heads import HEADS, LOCAL
from modules.region_bert import RegionBertEncoders
from modules.text_encoder import bert_text_tokens, build_bert
from .base import EncoderPair


def build_encoders(cfg, backbone_config: dict | None = None) -> RegionBertEncoders:
    return RegionBertEncoders(cfg.img_dim, cfg.embed_size, build_bert(cfg.bert_path, config=backbone_config))


def text_positions(cfg) -> int:
    from transformers import BertConfig
    from modules.backbones import resolve_backbone
    return BertConfig.from_pretrained(resolve_backbone(cfg.bert_path, "--bert_path")).max_position_embeddings


def caption_encoder(cfg, tokenizer, positions: int) -> BertCaptionEncoder:
    return BertCaptionEncoder(tokenizer, word_aug=cfg.word_aug, max_length=positions)


def train_dataset(cfg, encoder) -> PrecompTrainDataset:
    split = PrecompSplit(cfg.data_path, cfg.data_name, "train", cfg.img_dim)
    return PrecompTrainDataset(split, encoder, cfg.seed, cfg.region_drop)


def eval_split(cfg, split: str, max_images: int | None):
    data = PrecompSplit(cfg.data_path, cfg.data_name, split, cfg.img_dim)
    if len(data.captions) % CAPTIONS_PER_IMAGE:
        raise DataError(f"{data.caps_file} has {len(data.captions)} captions, not a multiple of "
                        f"{CAPTIONS_PER_IMAGE}: evaluation needs 5 consecutive captions per image")
    if max_images is not None and data.num_images > max_images:
        data.captions = data.captions[: max_images * CAPTIONS_PER_IMAGE]
    return PrecompImageSet(data), data.captions, data.caps_file


def resolve(values: dict, given: set) -> None:
    if not values["data_path"] or not values["data_name"]:
        raise ConfigError("region_bert training needs --data_path and --data_name (f30k_precomp or coco_precomp)")
    if values["embed_size"] is None:
        values["embed_size"] = HEADS[values["sim_head"]].embed_size
    values["val_split"] = values["val_split"] or "dev"


def caption_ids(cfg, split: str):
    """The ids SCAN ships next to precomputed features (<split>_ids.txt)."""
    from evaluation.extended import read_ids
    path = os.path.join(cfg.data_path, cfg.data_name, f"{split}_ids.txt")
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing: --extended needs the COCO ids of the rows (SCAN's {split}_ids.txt, "
                        "or a file of ids given with --ids_file)")
    return read_ids(path), path


def input_files(cfg, split: str) -> list[str]:
    folder = os.path.join(cfg.data_path, cfg.data_name)
    return [os.path.join(folder, f"{split}_{name}") for name in ("ims.npy", "caps.txt", "ids.txt")]


def collection(cfg, path: str):
    """A BUTD feature file (images x regions x dim), one item per row."""
    rows = RegionFileSet(path, cfg.img_dim)
    from detector.record import regions_record
    found = regions_record(path, len(rows))      # written by tools/extract_regions.py: the images' names
    if found is not None:
        return rows, [image["name"] for image in found[0]["images"]]
    return rows, [f"{os.path.basename(path)}[{row}]" for row in range(len(rows))]


PAIR = EncoderPair(
    name=DECLARED.name, summary=DECLARED.summary, feature_kind=LOCAL, text_kind="bert",
    backbone_option="bert_path", data_options=("data_path", "data_name"),
    data_hint="--data_path/--data_name", options=DECLARED.options, default_recipe="_region",
    logit_scale=False, head_lr_option="learning_rate",
    build_encoders=build_encoders, text_tokens=bert_text_tokens, text_positions=text_positions,
    caption_encoder=caption_encoder,
    train_dataset=train_dataset, eval_split=eval_split, resolve=resolve, caption_ids=caption_ids,
    input_files=input_files, coco=lambda cfg: cfg.data_name == "coco_precomp",
    collection=collection, collection_option="regions")
