"""BERT words -> joint space."""

import torch
from torch import nn
from transformers import BertConfig, BertModel

from .backbones import resolve_backbone
from .common import l2norm


def build_bert(bert_path: str, config: dict | None = None) -> BertModel:
    """BERT from a hub name or local folder, or its architecture alone from a config dict (weights
    then come from one of our checkpoints). The pooler is not built: the matching systems use
    token features only."""
    if config is not None:
        return BertModel(BertConfig.from_dict(config), add_pooling_layer=False)
    return BertModel.from_pretrained(resolve_backbone(bert_path, "--bert_path"), add_pooling_layer=False,
                                     local_files_only=True)


def bert_text_tokens(config: dict) -> dict:
    """What a tokenizer must agree with, from a BERT config: embedding rows, positions, and the
    [PAD] id the encoder masks (the released `ids != 0`)."""
    pad = config.get("pad_token_id")
    return {"rows": config["vocab_size"], "positions": config["max_position_embeddings"],
            "pad": 0 if pad is None else pad}


class BertTextEncoder(nn.Module):
    """`l2norm(linear(BERT(ids)))` for every token, CLS and SEP included."""

    def __init__(self, bert: BertModel, embed_size: int):
        super().__init__()
        self.bert = bert
        self.linear = nn.Linear(bert.config.hidden_size, embed_size)
        self.pad_token_id = bert_text_tokens(bert.config.to_dict())["pad"]

    def text_tokens(self) -> dict:
        return bert_text_tokens(self.bert.config.to_dict())

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        attention_mask = (input_ids != self.pad_token_id).long()
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return l2norm(self.linear(hidden))
