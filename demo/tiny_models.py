"""Tiny randomly initialised BERT and CLIP backbones with vocabularies built from captions.

They are saved as ordinary transformers folders (config, weights, tokenizer files), so the
production code loads them through `--bert_path` / `--clip_path` exactly like the hub models.
"""

import json
import os
import re
import string

import torch
from transformers import BertConfig, BertModel, CLIPConfig, CLIPModel

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLIP_START, CLIP_END = "<|startoftext|>", "<|endoftext|>"
BASE_CHARACTERS = string.ascii_lowercase + string.digits + string.punctuation


def caption_words(captions) -> list[str]:
    """Lower-cased words and punctuation marks, as BERT's basic tokenizer splits them."""
    words = set()
    for caption in captions:
        words.update(re.findall(r"[a-z0-9]+|[^\sa-z0-9]", caption.lower()))
    return sorted(words)


def write_bert_vocab(captions, folder: str) -> list[str]:
    """A WordPiece vocabulary: specials, every caption word, single characters and their
    ##continuations (so unseen words split into pieces instead of becoming [UNK])."""
    pieces = set(BASE_CHARACTERS) | {"##" + c for c in string.ascii_lowercase + string.digits}
    vocab = BERT_SPECIALS + sorted(set(caption_words(captions)) | pieces)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(vocab) + "\n")
    return vocab


def write_tiny_bert(folder: str, captions, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> str:
    vocab = write_bert_vocab(captions, folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=128,
                        pad_token_id=0)
    torch.manual_seed(seed)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def write_clip_vocab(captions, folder: str) -> dict:
    """CLIP-style byte-level BPE files whose merges spell each caption word as one token."""
    symbols = list(BASE_CHARACTERS) + [c + "</w>" for c in BASE_CHARACTERS]
    merges = []
    for word in caption_words(captions):
        if len(word) < 2:
            continue
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = (pieces[0], pieces[1])
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            if pieces[0] not in symbols:
                symbols.append(pieces[0])
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab[CLIP_START] = len(vocab)
    vocab[CLIP_END] = len(vocab)  # the largest id, as in CLIP: the EOT token is found by argmax
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as handle:
        json.dump(vocab, handle)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return vocab


def tiny_clip_config(vocab_size: int, width: int = 64, layers: int = 1, image_size: int = 32,
                     patch_size: int = 16, projection_dim: int = 32) -> CLIPConfig:
    """OpenAI-style tiny CLIP: one head per 64 channels, quick GELU, argmax-of-ids pooling."""
    return CLIPConfig(
        projection_dim=projection_dim,
        text_config=dict(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                         num_hidden_layers=layers, num_attention_heads=max(1, width // 64),
                         max_position_embeddings=77, bos_token_id=vocab_size - 2, eos_token_id=2,
                         pad_token_id=vocab_size - 1),
        vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                           num_attention_heads=max(1, width // 64), image_size=image_size, patch_size=patch_size))


def write_tiny_clip(folder: str, captions, width: int = 64, layers: int = 1, image_size: int = 32,
                    patch_size: int = 16, projection_dim: int = 32, seed: int = 0) -> str:
    vocab = write_clip_vocab(captions, folder)
    torch.manual_seed(seed)
    config = tiny_clip_config(len(vocab), width, layers, image_size, patch_size, projection_dim)
    CLIPModel(config).save_pretrained(folder)
    return folder
