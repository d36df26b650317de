"""clip: raw images and captions through CLIP's own towers (ViT-B/16), the encoder pair of ESL-CLIP."""

import os

from config.catalogue import CLIP as DECLARED
from datasets.captions import ClipCaptionEncoder
from datasets.karpathy import (ImageFileSet, KarpathyTrainDataset, annotation_file,
                               check_images_exist, evaluation_entries, load_karpathy_split)
from datasets.karpathy import caption_ids as karpathy_caption_ids
from errors import ConfigError, DataError, first_line
from modules.clip_encoder import ClipEncoders, build_clip, clip_text_tokens
from modules.heads import GLOBAL
from .base import EncoderPair

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def build_encoders(cfg, backbone_config: dict | None = None) -> ClipEncoders:
    encoders = ClipEncoders(build_clip(cfg.clip_path, config=backbone_config))
    if encoders.embed_size != cfg.embed_size:
        raise ConfigError(f"--embed_size {cfg.embed_size} does not match the CLIP projection size "
                          f"{encoders.embed_size} of {cfg.clip_path}; the CLIP systems work in CLIP's own space")
    return encoders


def _clip_config(clip_path: str):
    from transformers import CLIPConfig
    from modules.backbones import resolve_backbone
    try:
        return CLIPConfig.from_pretrained(resolve_backbone(clip_path, "--clip_path"))
    except OSError as exc:
        raise ConfigError(f"--clip_path {clip_path}: no CLIP config found ({first_line(exc)})") from exc


def text_positions(cfg) -> int:
    return _clip_config(cfg.clip_path).text_config.max_position_embeddings


def caption_encoder(cfg, tokenizer, positions: int) -> ClipCaptionEncoder:
    return ClipCaptionEncoder(tokenizer, context_length=positions, truncation=cfg.clip_truncation,
                              cleaning=cfg.clip_text_cleaning)


def train_dataset(cfg, encoder) -> KarpathyTrainDataset:
    entries = load_karpathy_split(cfg.dataset, cfg.ann_path, cfg.image_root, "train")
    return KarpathyTrainDataset(entries, encoder, cfg.image_size, cfg.truncated_images)


def eval_split(cfg, split: str, max_images: int | None):
    where = f"{cfg.dataset} split '{split}'"
    entries = load_karpathy_split(cfg.dataset, cfg.ann_path, cfg.image_root, split)
    entries = evaluation_entries(entries, where, max_images)
    paths = [path for path, _ in entries]
    check_images_exist(paths)
    captions = [caption for _, captions in entries for caption in captions]
    return ImageFileSet(paths, cfg.image_size, cfg.truncated_images), captions, where


def resolve(values: dict, given: set) -> None:
    if not values["dataset"] or not values["image_root"] or not values["ann_path"]:
        raise ConfigError("clip training needs --dataset (f30k or coco), --image_root and --ann_path")
    if values["image_size"] is None:         # a fresh model: sizes from the CLIP config
        config = _clip_config(values["clip_path"])
        values["image_size"] = config.vision_config.image_size
        if values["embed_size"] is None:
            values["embed_size"] = config.projection_dim
    coco = values["dataset"] == "coco"
    values["val_split"] = values["val_split"] or ("dev" if coco else "val")
    values["val_protocol"] = values["val_protocol"] or ("last_fold" if coco else "first_1k")
    if coco and "truncated_images" not in given:
        values["truncated_images"] = "load"   # the released COCO loader sets PIL's LOAD_TRUNCATED_IMAGES


def caption_ids(cfg, split: str):
    found = karpathy_caption_ids(cfg.dataset, cfg.ann_path, split)
    source = annotation_file(cfg.dataset, cfg.ann_path, split)
    if found is None:
        raise ConfigError(f"{source} gives its captions no COCO ids (sentences[].id), so --extended cannot "
                          "identify them; give --ids_file with the caption ids in the file's order")
    return found, source


def input_files(cfg, split: str) -> list[str]:
    return [annotation_file(cfg.dataset, cfg.ann_path, split)]


def collection(cfg, path: str):
    """A folder of images, in name order."""
    if not os.path.isdir(path):
        raise DataError(f"--images {path} is not a folder")
    names = sorted(name for name in os.listdir(path) if name.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise DataError(f"--images {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    broken = [name for name in names if "\n" in name or "\r" in name]
    if broken:
        raise DataError(f"--images {path}: the file name {broken[0]!r} holds a line break, which an index cannot "
                        "record (one name a line); rename it and index again")
    return ImageFileSet([os.path.join(path, name) for name in names], cfg.image_size, cfg.truncated_images,
                        what=f"indexing --images {path} stopped: image"), names


PAIR = EncoderPair(
    name=DECLARED.name, summary=DECLARED.summary, feature_kind=GLOBAL, text_kind="clip",
    backbone_option="clip_path", data_options=("dataset", "image_root", "ann_path"),
    data_hint="--dataset/--image_root/--ann_path", options=DECLARED.options, default_recipe="_clip",
    logit_scale=True, head_lr_option="noclip_lr",
    build_encoders=build_encoders, text_tokens=clip_text_tokens, text_positions=text_positions,
    caption_encoder=caption_encoder,
    train_dataset=train_dataset, eval_split=eval_split, resolve=resolve, caption_ids=caption_ids,
    input_files=input_files, coco=lambda cfg: cfg.dataset == "coco",
    collection=collection, collection_option="images")
