"""clip: raw images and captions through CLIP's own towers (ViT-B/16), the encoder pair of ESL-CLIP."""

import os

from transformers import CLIPConfig, CLIPTokenizer

from config.catalogue import CLIP as DECLARED
from datasets.captions import ClipCaptionEncoder, TokenizerFamily, register_tokenizer_family
from datasets.karpathy import ImageFileSet
from datasets.layouts import COCO, IMAGES, KARPATHY
from datasets.transforms import ClipPreprocess
from errors import ConfigError, DataError, first_line
from modules.backbones import resolve_backbone
from modules.clip_encoder import ClipEncoders, build_clip, clip_text_tokens
from modules.heads import GLOBAL
from .base import EncoderPair

TOKENIZERS = register_tokenizer_family(TokenizerFamily(
    "clip", "--clip_path", (("vocab.json", "merges.txt"), ("tokenizer.json",)), CLIPTokenizer,
    ("bos_token", "eos_token", "pad_token")))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def build_encoders(cfg, backbone_config: dict | None = None) -> ClipEncoders:
    encoders = ClipEncoders(build_clip(cfg.clip_path, config=backbone_config))
    if encoders.embed_size != cfg.embed_size:
        raise ConfigError(f"--embed_size {cfg.embed_size} does not match the CLIP projection size "
                          f"{encoders.embed_size} of {cfg.clip_path}; the CLIP systems work in CLIP's own space")
    return encoders


def _clip_config(clip_path: str):
    try:
        return CLIPConfig.from_pretrained(resolve_backbone(clip_path, "--clip_path"))
    except OSError as exc:
        raise ConfigError(f"--clip_path {clip_path}: no CLIP config found ({first_line(exc)})") from exc


def text_positions(cfg) -> int:
    return _clip_config(cfg.clip_path).text_config.max_position_embeddings


def image_transform(cfg) -> ClipPreprocess:
    return ClipPreprocess(cfg.image_size)


def caption_encoder(cfg, tokenizer, positions: int) -> ClipCaptionEncoder:
    return ClipCaptionEncoder(tokenizer, context_length=positions, truncation=cfg.clip_truncation,
                              cleaning=cfg.clip_text_cleaning)


def resolve(values: dict, given: set) -> None:
    if values["image_size"] is None:         # a fresh model: sizes from the CLIP config
        config = _clip_config(values["clip_path"])
        values["image_size"] = config.vision_config.image_size
        if values["embed_size"] is None:
            values["embed_size"] = config.projection_dim


def default_layout(values: dict) -> str | None:
    """--dataset f30k reads the karpathy layout, coco the coco layout."""
    return {"f30k": KARPATHY.name, "coco": COCO.name}.get(values.get("dataset"))


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
    return ImageFileSet([os.path.join(path, name) for name in names], image_transform(cfg), cfg.truncated_images,
                        what=f"indexing --images {path} stopped: image"), names


PAIR = EncoderPair(
    name=DECLARED.name, summary=DECLARED.summary, feature_kind=GLOBAL, text_kind=TOKENIZERS.name,
    backbone_option="clip_path", options=DECLARED.options, default_recipe="_clip",
    logit_scale=True, head_lr_option="noclip_lr", reads=IMAGES, default_layout=default_layout,
    image_transform=image_transform, build_encoders=build_encoders, text_tokens=clip_text_tokens,
    text_positions=text_positions, caption_encoder=caption_encoder, resolve=resolve,
    collection=collection, collection_option="images")
