"""Caption -> token ids, with the released word-level augmentation for BERT; tokenizers loaded
from a backbone folder, or rebuilt from the copy a checkpoint carries."""

import html
import logging
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from transformers import AutoTokenizer

from config.catalogue import CLIP_TEXT_CLEANINGS, CLIP_TRUNCATIONS
from errors import ConfigError
from modules.backbones import resolve_backbone

logger = logging.getLogger("dimmatch")

@dataclass(frozen=True)
class TokenizerFamily:
    """A tokenizer family (an encoder pair's `text_kind`, the `kind` checkpoints record): the option
    naming its folder, the file sets a folder must hold (any one of them), the tokenizer class, the
    special tokens that must fit the model's embedding table, and whether the text tower masks by
    the pad id (then the tokenizer's must equal it)."""

    name: str
    option: str
    files: tuple
    tokenizer_class: type
    special_tokens: tuple
    pad_masked: bool = False


TOKENIZER_FAMILIES: dict[str, TokenizerFamily] = {}


def register_tokenizer_family(family: TokenizerFamily) -> TokenizerFamily:
    """A family is registered by the module of the encoder pair that uses it (pairs.region_bert: BERT
    WordPiece, pairs.clip: CLIP BPE), without a change here."""
    if TOKENIZER_FAMILIES.get(family.name, family) != family:
        raise ValueError(f"tokenizer family {family.name} is registered twice, differently")
    TOKENIZER_FAMILIES[family.name] = family
    return family


def tokenizer_family(kind: str) -> TokenizerFamily:
    if kind not in TOKENIZER_FAMILIES:
        raise ConfigError(f"no tokenizer family {kind!r} is registered (known: {', '.join(TOKENIZER_FAMILIES)})")
    return TOKENIZER_FAMILIES[kind]


def load_tokenizer(kind: str, path: str, need_config: bool = True):
    """The BERT WordPiece or CLIP BPE tokenizer of a hub name or a local folder (without
    `need_config`, a folder of tokenizer files alone will do).

    A folder without the tokenizer's files is an error: transformers would otherwise build a
    tokenizer of special tokens only and map every word to [UNK] without a word of warning."""
    family = tokenizer_family(kind)
    option = family.option
    folder = resolve_backbone(path, option, need_config)
    if not any(all(os.path.isfile(os.path.join(folder, name)) for name in files) for files in family.files):
        wanted = " or ".join("+".join(files) for files in family.files)
        raise ConfigError(f"{option} {path} has no {kind.upper()} tokenizer files ({wanted})")
    tokenizer_class = family.tokenizer_class
    try:
        tokenizer = tokenizer_class.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as first_error:
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError):
            raise ConfigError(f"cannot load the {kind} tokenizer from {path!r}: {first_error}") from first_error
    if len(tokenizer) <= len(tokenizer.all_special_ids):
        raise ConfigError(f"{option} {path}: the tokenizer has only its {len(tokenizer)} special tokens")
    return tokenizer


def tokenizer_snapshot(tokenizer, kind: str) -> dict:
    """The tokenizer as plain text files, stored in our checkpoints so that they evaluate
    anywhere, offline, with exactly the tokenizer they were trained with."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        files = {}
        for name in sorted(os.listdir(folder)):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                files[name] = handle.read()
    return {"kind": kind, "files": files}


def tokenizer_from_snapshot(snapshot: dict):
    tokenizer_class = tokenizer_family(snapshot["kind"]).tokenizer_class
    with tempfile.TemporaryDirectory() as folder:
        for name, text in snapshot["files"].items():
            with open(os.path.join(folder, os.path.basename(name)), "w", encoding="utf-8") as handle:
                handle.write(text)
        return tokenizer_class.from_pretrained(folder, local_files_only=True)


def checkpoint_tokenizer(kind: str, option: str, snapshot: dict | None, text_tokens: dict, where: str,
                         given: str | None = None, named: str | None = None, need_config: bool = False,
                         keep_own: bool = False):
    """The tokenizer of a checkpoint's text tower (`text_tokens`: its embedding table and special ids),
    the one resolution of evaluation, --init_from and resume:

    * the checkpoint carries its own (`snapshot`, our format 2) and no folder is `given`: that one,
      checked against the table;
    * a folder `given` (`--option`): loaded and checked against the table and against the checkpoint's
      own, if it carries one; the given one is used, or with `keep_own` (a resumed run goes on with the
      tokenizer it started with) the checkpoint's own;
    * neither (released formats, our format 1): the one the checkpoint names (`named`), which must be found.
    `where` names the checkpoint in the messages ("checkpoint PATH")."""
    reference = tokenizer_from_snapshot(snapshot) if snapshot is not None else None
    if given is None and reference is not None:
        check_tokenizer(reference, kind, text_tokens, where)
        return reference
    name = given or named
    try:
        tokenizer = load_tokenizer(kind, name, need_config=need_config)
    except ConfigError as exc:
        if given is None:
            raise ConfigError(f"{where} carries no tokenizer, and the one it names is not found: {exc}") from exc
        raise
    check_tokenizer(tokenizer, kind, text_tokens, f"--{option} {name}", reference=reference)
    return reference if keep_own and reference is not None else tokenizer


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
        self.truncation_noted = False

    @property
    def max_positions(self) -> int:
        return self.max_length

    def truncation_note(self) -> str:
        return (f"cut to {self.max_length} tokens ([CLS] and [SEP] kept); the released code does not cut and its "
                "BERT would fail on them")

    def __call__(self, caption: str, rng: np.random.Generator | None = None) -> list[int]:
        encoding = self.tokenizer(caption, add_special_tokens=False)
        ids = encoding["input_ids"]
        if rng is not None and self.word_aug > 0:
            ids = self._augment(ids, encoding.word_ids(), rng)
        if len(ids) > self.max_length - 2:
            note_truncation(self, caption)
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




def released_clip_clean(text: str) -> str:
    """The text cleaning of the released ESL-CLIP tokeniser (OpenAI's `basic_clean`): ftfy's
    `fix_text`, HTML entities unescaped twice, outer whitespace stripped. The tokenizer's own
    normalisation (whitespace runs, lower case) follows."""
    # an optional dependency, needed only by the released CLIP text cleaning
    try:
        import ftfy
    except ImportError as exc:
        raise ConfigError("the released ESL-CLIP text cleaning needs ftfy (pip install ftfy==6.3.1); "
                          "--clip_text_cleaning tokenizer skips it") from exc
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


class ClipCaptionEncoder:
    """CLIP BPE with start and end tokens, cut to the context length (77).

    `cleaning` 'released' first cleans the text as the released tokeniser does (ftfy, HTML
    entities); 'tokenizer' leaves it to the tokenizer's own normalisation.

    `truncation` decides what a longer caption keeps: 'released' its first 77 ids, as the released
    ESL-CLIP tokeniser does, so the end token is lost and the text tower pools at the start token
    (the largest id left, and the first position when no end token is found); 'keep_eot' its
    first 76 ids and the end token, as OpenAI's `clip.tokenize(truncate=True)` does."""

    def __init__(self, tokenizer, context_length: int = 77, truncation: str = "released",
                 cleaning: str = "released"):
        if truncation not in CLIP_TRUNCATIONS or cleaning not in CLIP_TEXT_CLEANINGS:
            raise ValueError(f"unknown CLIP truncation {truncation!r} or cleaning {cleaning!r}")
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.truncation = truncation
        self.clean = released_clip_clean if cleaning == "released" else None
        if self.clean is not None:
            self.clean("")      # a missing ftfy is reported before any work
        self.pad_id = tokenizer.pad_token_id
        self.truncation_noted = False

    @property
    def max_positions(self) -> int:
        return self.context_length

    def truncation_note(self) -> str:
        if self.truncation == "released":
            return (f"cut to their first {self.context_length} tokens, end token dropped, as the released ESL-CLIP "
                    "tokenisation does (the text tower then pools at the start token; --clip_truncation keep_eot "
                    "keeps the end token)")
        return (f"cut to {self.context_length - 1} tokens plus the end token (--clip_truncation keep_eot; the "
                "released ESL-CLIP tokenisation drops the end token)")

    def __call__(self, caption: str, rng=None) -> list[int]:
        ids = self.tokenizer(self.clean(caption) if self.clean is not None else caption)["input_ids"]
        if len(ids) > self.context_length:
            note_truncation(self, caption)
            ids = ids[: self.context_length] if self.truncation == "released" else \
                ids[: self.context_length - 1] + ids[-1:]
        return ids


def note_truncation(encoder, caption: str) -> None:
    """Say once per encoder (and process) that captions are cut to the text encoder's positions,
    and how."""
    if not encoder.truncation_noted:
        encoder.truncation_noted = True
        logger.warning("captions longer than the text encoder's %d positions are %s, e.g. %r",
                       encoder.max_positions, encoder.truncation_note(), caption[:60] + "...")


def check_tokenizer(tokenizer, kind: str, text_tokens: dict, source: str, reference=None) -> None:
    """Refuse a tokenizer that does not fit the model's embedding table (or, when the checkpoint
    carries its own tokenizer, differs from it): every caption would be encoded wrongly."""
    vocabulary = len(tokenizer)
    rows = text_tokens["rows"]
    if vocabulary != rows:
        raise ConfigError(f"the tokenizer of {source} has {vocabulary} tokens but the model's embedding table has "
                          f"{rows} rows: it is not the tokenizer this model was trained with")
    family = tokenizer_family(kind)
    for name in family.special_tokens:
        token_id = getattr(tokenizer, f"{name}_id", None)
        if token_id is None or not 0 <= token_id < rows:
            raise ConfigError(f"the tokenizer of {source} has no usable {name} (id {token_id}) for an embedding "
                              f"table of {rows} rows")
        if reference is not None and getattr(reference, f"{name}_id") != token_id:
            raise ConfigError(f"the tokenizer of {source} gives {name} the id {token_id}, the checkpoint's own "
                              f"tokenizer {getattr(reference, f'{name}_id')}")
    if text_tokens.get("pad") is not None and family.pad_masked and tokenizer.pad_token_id != text_tokens["pad"]:
        raise ConfigError(f"the tokenizer of {source} pads with id {tokenizer.pad_token_id}, the model masks id "
                          f"{text_tokens['pad']}")
    if text_tokens.get("eos") is not None and tokenizer.eos_token_id != text_tokens["eos"]:
        raise ConfigError(f"the tokenizer of {source} ends captions with id {tokenizer.eos_token_id}, the model "
                          f"pools at id {text_tokens['eos']}")
    if reference is not None:
        ours, theirs = tokenizer.get_vocab(), reference.get_vocab()
        differing = sum(ours.get(token) != index for token, index in theirs.items())
        if differing:
            raise ConfigError(f"the tokenizer of {source} maps {differing} of {len(theirs)} tokens to other ids "
                              "than the checkpoint's own tokenizer")
