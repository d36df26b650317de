"""The region_bert encoder pair's network: BUTD regions -> RegionEncoder, BERT words -> linear."""

import torch
from torch import nn

from .heads.base import LOCAL
from .region_encoder import RegionEncoder
from .text_encoder import BertTextEncoder


class RegionBertEncoders(nn.Module):
    """Both sides give (N, T, d) local features with their lengths."""

    feature_kind = LOCAL
    text_kind = "bert"
    logit_scale = None

    def __init__(self, img_dim: int, embed_size: int, bert):
        super().__init__()
        self.image_encoder = RegionEncoder(img_dim, embed_size)
        self.text_encoder = BertTextEncoder(bert, embed_size)

    def encode_images(self, regions: torch.Tensor, lengths: torch.Tensor):
        return self.image_encoder(regions), lengths

    def encode_captions(self, input_ids: torch.Tensor, lengths: torch.Tensor):
        return self.text_encoder(input_ids), lengths

    def text_tokens(self) -> dict:
        return self.text_encoder.text_tokens()

    def backbone_config(self) -> dict:
        """The BERT config that rebuilds this architecture (weights come from a checkpoint)."""
        return self.text_encoder.bert.config.to_dict()

    def optimizer_groups(self, cfg) -> list[dict]:
        """The released groups: text linear at lr, BERT at lr/10, the region encoder at lr."""
        lr = cfg.learning_rate
        return [
            {"params": list(self.text_encoder.linear.parameters()), "lr": lr, "name": "text_linear"},
            {"params": list(self.text_encoder.bert.parameters()), "lr": lr * 0.1, "name": "bert"},
            {"params": list(self.image_encoder.parameters()), "lr": lr, "name": "image_encoder"},
        ]
