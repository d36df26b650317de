"""CLIP image and text towers from transformers, giving one projected embedding per item."""

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from .backbones import resolve_backbone
from .common import lengths_to_mask
from .heads.base import GLOBAL


def build_clip(clip_path: str, config: dict | None = None) -> CLIPModel:
    """CLIPModel from a hub name or local folder, or its architecture alone from a config dict
    (weights then come from one of our checkpoints or a converted released one)."""
    if config is not None:
        return CLIPModel(CLIPConfig.from_dict(config))
    return CLIPModel.from_pretrained(resolve_backbone(clip_path, "--clip_path"), local_files_only=True)


def clip_text_tokens(config: dict) -> dict:
    """What a tokenizer must agree with, from a CLIP config. transformers pools the end token by
    argmax of the ids when the config's eos id is the legacy 2 (OpenAI's layout), so the end token
    must then be the largest id."""
    text = config["text_config"]
    rows, eos = text["vocab_size"], text.get("eos_token_id")
    return {"rows": rows, "positions": text["max_position_embeddings"], "eos": rows - 1 if eos == 2 else eos}


class ClipEncoders(nn.Module):
    """`encode_images` = visual_projection(post-LN CLS); `encode_captions` = text_projection of
    the EOT token, as OpenAI's encode_image / encode_text. Embeddings are not normalised here:
    the heads normalise as their formulas say."""

    feature_kind = GLOBAL
    text_kind = "clip"

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip = clip

    @property
    def embed_size(self) -> int:
        return self.clip.config.projection_dim

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def backbone_config(self) -> dict:
        """The CLIP config that rebuilds this architecture (weights come from a checkpoint)."""
        return self.clip.config.to_dict()

    def text_tokens(self) -> dict:
        return clip_text_tokens(self.clip.config.to_dict())

    def encode_images(self, pixel_values: torch.Tensor, lengths=None):
        pooled = self.clip.vision_model(pixel_values=pixel_values).pooler_output
        return self.clip.visual_projection(pooled), None

    def encode_captions(self, input_ids: torch.Tensor, lengths: torch.Tensor):
        attention_mask = lengths_to_mask(lengths, input_ids.shape[1]).long()
        pooled = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.clip.text_projection(pooled), None

    def optimizer_groups(self, cfg) -> list[dict]:
        return [{"params": list(self.clip.parameters()), "lr": cfg.clip_lr, "name": "clip"}]
