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


class BertTextEncoder(nn.Module):
    """`l2norm(linear(BERT(ids)))` for every token, CLS and SEP included."""

    def __init__(self, bert: BertModel, embed_size: int):
        super().__init__()
        self.bert = bert
        self.linear = nn.Linear(bert.config.hidden_size, embed_size)
        # the released encoder masks `ids != 0`, i.e. BERT's [PAD] id
        self.pad_token_id = bert.config.pad_token_id if bert.config.pad_token_id is not None else 0

    def text_tokens(self) -> dict:
        """What a tokenizer must agree with: embedding rows, positions, the [PAD] id masked."""
        return {"rows": self.bert.embeddings.word_embeddings.num_embeddings,
                "positions": self.bert.config.max_position_embeddings, "pad": self.pad_token_id}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        attention_mask = (input_ids != self.pad_token_id).long()
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return l2norm(self.linear(hidden))
