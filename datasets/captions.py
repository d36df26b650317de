"""Caption -> token ids, with the released word-level augmentation for BERT."""

import numpy as np
from transformers import AutoTokenizer, BertTokenizer, CLIPTokenizer

from errors import ConfigError


def load_tokenizer(kind: str, path: str):
    """The BERT WordPiece or CLIP BPE tokenizer of a hub name or a local folder."""
    tokenizer_class = {"bert": BertTokenizer, "clip": CLIPTokenizer}[kind]
    try:
        return tokenizer_class.from_pretrained(path)
    except (OSError, ValueError) as first_error:
        try:
            return AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError):
            raise ConfigError(f"cannot load the {kind} tokenizer from {path!r}: {first_error}") from first_error


class BertCaptionEncoder:
    """`[CLS] wordpieces [SEP]`, as the released basic + WordPiece tokenisation.

    Training augmentation (released `process_caption`): each word (BERT basic-tokenizer word,
    found through `word_ids()`) is altered with probability `word_aug`; of those, 50% have
    every wordpiece replaced by [MASK], 10% by random vocabulary ids, 40% are deleted.
    """

    def __init__(self, tokenizer, word_aug: float = 0.2, max_length: int = 512):
        self.tokenizer = tokenizer
        self.word_aug = word_aug
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id
        self.vocab_size = len(tokenizer.get_vocab())

    def __call__(self, caption: str, rng: np.random.Generator | None = None) -> list[int]:
        encoding = self.tokenizer(caption, add_special_tokens=False)
        ids = encoding["input_ids"]
        if rng is not None and self.word_aug > 0:
            ids = self._augment(ids, encoding.word_ids(), rng)
        ids = ids[: self.max_length - 2]
        return [self.tokenizer.cls_token_id] + ids + [self.tokenizer.sep_token_id]

    def _augment(self, ids: list[int], word_ids: list[int], rng: np.random.Generator) -> list[int]:
        output = []
        start = 0
        while start < len(ids):
            end = start + 1
            while end < len(ids) and word_ids[end] == word_ids[start]:
                end += 1
            pieces = ids[start:end]
            draw = rng.random()
            if draw < self.word_aug:
                draw /= self.word_aug
                if draw < 0.5:
                    pieces = [self.tokenizer.mask_token_id] * len(pieces)
                elif draw < 0.6:
                    pieces = [int(i) for i in rng.integers(0, self.vocab_size, size=len(pieces))]
                else:
                    pieces = []
            output.extend(pieces)
            start = end
        return output


class ClipCaptionEncoder:
    """CLIP BPE with start/end tokens, truncated to the 77-token context (end token kept)."""

    def __init__(self, tokenizer, context_length: int = 77):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id = tokenizer.pad_token_id

    def __call__(self, caption: str, rng=None) -> list[int]:
        return self.tokenizer(caption, truncation=True, max_length=self.context_length)["input_ids"]


def caption_encoder_for(cfg):
    """The caption encoder of a config's text tower; it augments only when given an rng."""
    if cfg.encoders == "clip":
        return ClipCaptionEncoder(load_tokenizer("clip", cfg.clip_path))
    return BertCaptionEncoder(load_tokenizer("bert", cfg.bert_path), word_aug=getattr(cfg, "word_aug", 0.2))
