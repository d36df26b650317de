"""clip: raw images and captions through CLIP's own towers (ViT-B/16), the encoder pair of ESL-CLIP."""

import os

from config.schema import LOCATION, MODEL, TRAINING, Option
from datasets.captions import CLIP_TEXT_CLEANINGS, CLIP_TRUNCATIONS, ClipCaptionEncoder
from datasets.karpathy import (TRUNCATED_IMAGES, ImageFileSet, KarpathyTrainDataset, annotation_file,
                               check_images_exist, evaluation_entries, load_karpathy_split)
from datasets.karpathy import caption_ids as karpathy_caption_ids
from errors import ConfigError, DataError, first_line
from modules.clip_encoder import ClipEncoders, build_clip, clip_text_tokens
from modules.heads import GLOBAL
from .base import EncoderPair

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

OPTIONS = (
    Option("dataset", str, None, "raw-image dataset", TRAINING, choices=("f30k", "coco"), evaluation=True),
    Option("image_root", str, None, "Flickr30K image folder, or the COCO folder holding train2014/ and val2014/",
           LOCATION, evaluation=True),
    Option("ann_path", str, None, "Karpathy JSON file, or the folder holding dataset_flickr30k.json / "
                                  "{train,dev,testall}_coco.json", LOCATION, evaluation=True),
    Option("clip_path", str, "openai/clip-vit-base-patch16", "hub name or local CLIP folder (evaluation: a folder "
                                                             "with the tokenizer files is enough)",
           LOCATION, evaluation=True),
    Option("truncated_images", str, "refuse", "raw images whose file is cut short: load = decode what is there "
                                              "(the released COCO loader), refuse = unreadable (skipped in training, "
                                              "an error in evaluation) [COCO: load]",
           TRAINING, choices=TRUNCATED_IMAGES, evaluation=True),
    Option("clip_truncation", str, "released", "captions longer than 77 tokens: released = the first 77 ids (end "
                                               "token lost, pooling at the start token, as the released ESL-CLIP "
                                               "code); keep_eot = 76 ids and the end token",
           TRAINING, choices=CLIP_TRUNCATIONS, evaluation=True),
    Option("clip_text_cleaning", str, "released", "released = ftfy and HTML unescaping first, as the released "
                                                  "tokeniser; tokenizer = the tokenizer's own normalisation only",
           TRAINING, choices=CLIP_TEXT_CLEANINGS, evaluation=True),
    Option("clip_lr", float, 1e-6, "lr of the CLIP towers", TRAINING, low=0, closed="()"),
    Option("noclip_lr", float, 3e-5, "lr of the head", TRAINING, low=0, closed="()"),
    Option("image_size", int, None, "input image size, from the CLIP config", MODEL, flag=False),
)



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
    return ImageFileSet([os.path.join(path, name) for name in names], cfg.image_size, cfg.truncated_images), names


PAIR = EncoderPair(
    name="clip", summary="CLIP image and text towers", feature_kind=GLOBAL, text_kind="clip",
    backbone_option="clip_path", data_options=("dataset", "image_root", "ann_path"),
    data_hint="--dataset/--image_root/--ann_path", options=OPTIONS, default_recipe="_clip",
    logit_scale=True, head_lr_option="noclip_lr",
    build_encoders=build_encoders, text_tokens=clip_text_tokens, text_positions=text_positions,
    caption_encoder=caption_encoder,
    train_dataset=train_dataset, eval_split=eval_split, resolve=resolve, caption_ids=caption_ids,
    input_files=input_files, coco=lambda cfg: cfg.dataset == "coco",
    collection=collection, collection_option="images")
