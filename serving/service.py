"""What tools/serve.py answers, without the web framework: one model in memory, an index that may be
replaced on disk, text and image queries through tools/retrieve.py's own two-stage search, the
head's explanation of a result, and cached thumbnails of the index's own image files.

Thread safety: the model (its tokenizer, X-Dim's cached dependency matrix, torch's threads) is used
under one lock, so concurrent requests are answered one model call at a time and never share
intermediate state; reading the index and making thumbnails need no lock. A request takes one
snapshot of the loaded index at its start and uses only it, so an index replaced on disk is seen
whole (reloaded, when it was made with the same checkpoints) or refused, never mixed.
"""

import argparse
import hashlib
import os
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from errors import UserError, first_line
from evaluation.scoring import score_all
from retrieval import collection
from retrieval.commands import encode_captions, open_index, query_vectors, rank_text, read_caption_file

# What a client may ask for; larger requests are refused with 400 (the body cap is the app's).
LIMITS = {"query_chars": 1000, "k": 100, "rerank_k": 2000, "body_bytes": 16 * 1024}
THUMBNAIL = 256
TOP_REGIONS = 3
IMAGE_SUFFIXES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                  ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}
# the media type of a full-size file is that of its decoded content (PIL's format), never its name's
IMAGE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
                 "GIF": "image/gif", "TIFF": "image/tiff"}


class Refused(UserError):
    """A request answered with an error: `status` is the HTTP status, the message one line."""

    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


@dataclass
class Loaded:
    """One generation of the index on disk, opened whole."""

    index: collection.CollectionIndex
    identity: tuple          # (folder inode, index.json inode, size, mtime): what a replacement changes
    generation: str          # a short name of `identity`, given with every result


def _identity(folder: str) -> tuple:
    described = os.stat(os.path.join(folder, "index.json"))
    return os.stat(folder).st_ino, described.st_ino, described.st_size, described.st_mtime_ns


class Service:
    def __init__(self, index: str, checkpoint: str | None = None, shortlist: str | None = None,
                 captions: str | None = None, device: torch.device = torch.device("cpu"), batch_size: int = 128,
                 thumbnails: str | None = None, models: tuple | None = None):
        """`models`: (model, caption encoder, shortlister) already loaded, instead of the index's
        checkpoints (bench/bench_serve.py's synthetic indexes have none)."""
        self.folder = index.rstrip("/") or index
        self.device, self.batch_size = device, batch_size
        self.caption_file = captions
        self.captions = read_caption_file(captions) if captions else None
        self.thumbnails = thumbnails or f"{self.folder}.thumbs"
        args = argparse.Namespace(index=self.folder, checkpoint=checkpoint, shortlist=shortlist)
        opened = self._open()
        try:
            if opened[0].paths is not None:        # an index without image files needs no cache
                os.makedirs(self.thumbnails, exist_ok=True)
        except OSError as exc:
            raise Refused(f"--thumbnails {self.thumbnails}: cannot create the thumbnail cache ({exc.strerror or exc})")
        if models is None:
            opened_index, (self.model, self.encoder), self.shortlister = open_index(args, device, opened[0])
        else:
            (self.model, self.encoder, self.shortlister), opened_index = models, opened[0]
        self.model.eval()
        self.checkpoints = [saved["sha256"] for saved in opened_index.provenance["checkpoints"]]
        self._state = self._loaded(*opened)
        self._refused: tuple | None = None
        self.lock = threading.Lock()           # the model: one call at a time
        self._reload_lock = threading.Lock()
        if self.captions is not None:           # encoded once, before the first request
            self._caption_items = encode_captions(self.model, self.encoder, self.captions, device, batch_size)

    # -- the index, whole ---------------------------------------------------------------------------

    def _open(self) -> tuple:
        """(index, identity) read in one piece: the identity is the same before and after reading."""
        for _ in range(3):
            try:
                before = _identity(self.folder)
            except OSError:
                before = None
            index = collection.CollectionIndex(self.folder)       # a missing or damaged index: one line
            try:
                if before is not None and _identity(self.folder) == before:
                    return index, before
            except OSError:
                pass
        raise Refused(f"index {self.folder} keeps changing on disk; try again when it is written", 503)

    @staticmethod
    def _loaded(index, identity) -> Loaded:
        generation = hashlib.sha256(repr(identity).encode()).hexdigest()[:12]
        return Loaded(index, identity, generation)

    def current(self, generation: str | None = None) -> Loaded:
        """The index as it is on disk now: the loaded one, a replacement made with the same
        checkpoints (reloaded whole), or a refusal that says why."""
        try:
            identity = _identity(self.folder)
        except OSError:
            raise Refused(f"index {self.folder} is not there any more (being replaced?); try again, or restart "
                          "tools/serve.py with an index", 503) from None
        state = self._state
        if identity != state.identity:
            with self._reload_lock:
                state = self._state
                if identity != state.identity:
                    state = self._reload(identity)
        if generation is not None and generation != state.generation:
            raise Refused(f"the index has changed since that result (generation {generation}, now "
                          f"{state.generation}); search again", 409)
        return state

    def _reload(self, identity: tuple) -> Loaded:
        if self._refused and self._refused[0] == identity:
            raise Refused(self._refused[1], 409)
        try:
            index, identity = self._open()
        except UserError as exc:
            raise Refused(f"index {self.folder} changed on disk and cannot be read now ({first_line(exc)})", 503) \
                from exc
        found = [saved["sha256"] for saved in index.provenance["checkpoints"]]
        if found != self.checkpoints:
            message = (f"index {self.folder} was replaced on disk by one made with another checkpoint (sha256 "
                       f"{(found or [''])[0][:12]}; this server runs {(self.checkpoints or [''])[0][:12]}); restart "
                       "tools/serve.py to serve it")
            self._refused = (identity, message)
            raise Refused(message, 409)
        self._state = self._loaded(index, identity)
        return self._state

    # -- checks -----------------------------------------------------------------------------------

    @staticmethod
    def _query(text) -> str:
        if text is None or not str(text).strip():
            raise Refused("q must be a caption (got an empty one)")
        if len(text) > LIMITS["query_chars"]:
            raise Refused(f"q has {len(text)} characters; at most {LIMITS['query_chars']} are accepted")
        return text

    @staticmethod
    def _count(name: str, value: int, limit: int) -> int:
        if not 1 <= value <= limit:
            raise Refused(f"{name} must be between 1 and {limit} (got {value})")
        return value

    @staticmethod
    def _item(state: Loaded, item: int) -> int:
        if not 0 <= item < len(state.index):
            raise Refused(f"id {item}: the index has items 0..{len(state.index) - 1}", 404)
        return item

    # -- answers ----------------------------------------------------------------------------------

    def health(self) -> dict:
        """200 whenever the server is up, so that a probe can tell it from a dead one: `status` is
        ok, or refused / unavailable with the message every other route answers with."""
        try:
            state = self.current()
        except Refused as exc:
            return {"status": "refused" if exc.status == 409 else "unavailable", "message": str(exc),
                    "index": os.path.abspath(self.folder), "limits": LIMITS}
        saved = state.index.provenance["checkpoints"] or [{"file": None, "sha256": ""}]
        return {"status": "ok", "index": os.path.abspath(self.folder), "count": len(state.index),
                "generation": state.generation, "format_version": state.index.meta["version"],
                "checkpoint": {"file": saved[0]["file"], "sha256": saved[0]["sha256"]},
                "shortlist": ({"file": saved[1]["file"], "sha256": saved[1]["sha256"]} if len(saved) > 1 else None),
                "head": type(self.model.head).__name__, "first_stage": state.index.meta.get("first_stage"),
                "images": state.index.paths is not None, "boxes": state.index.boxes is not None,
                "captions": None if self.captions is None else {"file": self.caption_file,
                                                                 "count": len(self.captions)},
                "limits": LIMITS}

    def search(self, q: str, k: int = 10, rerank_k: int = 100) -> dict:
        """`retrieve.py text` for one query: the same encoding, shortlist and re-ranking."""
        q = self._query(q)
        self._count("k", k, LIMITS["k"])
        self._count("rerank_k", rerank_k, LIMITS["rerank_k"])
        state = self.current()
        order: list = []
        with self.lock:
            started = time.perf_counter()
            captions, vectors = query_vectors(self.model, self.encoder, self.shortlister, [q], self.device,
                                              self.batch_size)
            encoded = time.perf_counter()
            results, timing = rank_text(state.index, self.model, captions, vectors, k, rerank_k, self.device,
                                        self.batch_size, first_stage=order)
        first_rank = {int(row): place for place, row in enumerate(order[0], start=1)}
        names = state.index.names
        used_rerank = min(rerank_k, len(state.index))      # what was used is echoed, and a note says why
        used_k = min(k, used_rerank)
        notes = ([f"rerank_k {rerank_k} is more than the index's {len(state.index)} images: all were re-ranked"]
                 if used_rerank < rerank_k else []) + \
                ([f"k {k} is more than the {used_rerank} images re-ranked: {used_k} results"] if used_k < k else [])
        return {"query": q, "k": used_k, "rerank_k": used_rerank, "count": len(state.index),
                "generation": state.generation, **({"note": "; ".join(notes)} if notes else {}),
                "timing_ms": {"encode": 1000 * (encoded - started), "first_stage": 1000 * timing["search"],
                              "rerank": 1000 * timing["rerank"]},
                "results": [{"id": row, "name": names[row], "score": score, "rank": rank,
                             "first_stage_rank": first_rank.get(row)}
                            for rank, (row, score) in enumerate(results[0], start=1)]}

    def captions_for(self, item: int, k: int = 10) -> dict:
        """`retrieve.py image`: the captions of --captions ranked for an image of the index."""
        if self.captions is None:
            raise Refused("this server has no captions to rank: start tools/serve.py with --captions FILE (one "
                          "caption a line)", 404)
        self._count("k", k, LIMITS["k"])
        state = self.current()
        self._item(state, item)
        with self.lock:
            started = time.perf_counter()
            scores = score_all(self.model.head, state.index.items(np.array([item])), self._caption_items,
                               self.device, progress=False)[0]
            took = time.perf_counter() - started
        best = np.argsort(-scores, kind="stable")[:k]
        return {"id": item, "name": state.index.names[item], "generation": state.generation,
                "timing_ms": {"score": 1000 * took},
                "results": [{"line": int(row) + 1, "caption": self.captions[row], "score": float(scores[row]),
                             "rank": rank} for rank, row in enumerate(best, start=1)]}

    def explain(self, q: str, item: int, generation: str | None = None) -> dict:
        """What the head saw for (query, image): its score, the additive parts of it (levels or
        dimension groups) and, for heads that attend, each word's top regions and the regions the
        words attended to most, with their boxes when the index has them."""
        q = self._query(q)
        state = self.current(generation)
        self._item(state, item)
        with self.lock:
            captions = encode_captions(self.model, self.encoder, [q], self.device, self.batch_size)
            caption_block, caption_lengths = captions.gather(torch.tensor([0]), self.device)
            image_block, image_lengths = state.index.items(np.array([item])).block(0, 1, self.device)
            with torch.inference_mode():
                explained = self.model.head.explain(image_block, image_lengths, caption_block, caption_lengths)
            tokens = None
            if explained["attention"] is not None and hasattr(self.encoder, "tokenizer"):
                tokens = self.encoder.tokenizer.convert_ids_to_tokens(self.encoder(q))
        parts = explained["parts"][0, 0].float().cpu().tolist()
        answer = {"query": q, "id": item, "name": state.index.names[item], "generation": state.generation,
                  "head": type(self.model.head).__name__, "score": float(explained["score"][0, 0]),
                  "parts": [{"name": name, "value": value} for name, value in zip(explained["part_names"], parts)],
                  "part_kind": explained["part_kind"], "words": None, "regions": None, "boxes": None,
                  "image_size": self._image_size(state, item)}
        if explained["attention"] is None:
            answer["note"] = "this head scores one vector per image and caption: no regions to show"
            return answer
        attention = explained["attention"][0, 0].float().cpu().numpy()            # (words, regions)
        tokens = tokens if tokens and len(tokens) == len(attention) else [f"#{i}" for i in range(len(attention))]
        content = [i for i, token in enumerate(tokens) if token not in ("[CLS]", "[SEP]", "[PAD]")] or \
            list(range(len(tokens)))
        answer["words"] = [{"token": token, "top": [{"region": int(r), "weight": float(attention[i, r])}
                                                    for r in np.argsort(-attention[i], kind="stable")[:TOP_REGIONS]]}
                           for i, token in enumerate(tokens)]
        overall = attention[content].mean(0)
        answer["regions"] = [{"region": int(r), "weight": float(overall[r])}
                             for r in np.argsort(-overall, kind="stable")[:TOP_REGIONS]]
        if state.index.boxes is not None:
            answer["boxes"] = np.asarray(state.index.boxes[item], dtype=np.float32).round(1).tolist()
        elif state.index.meta["version"] < 4:
            answer["note"] = (f"this index (format version {state.index.meta['version']}) records no region boxes: "
                              "regions are shown by number; rebuild it with tools/retrieve.py index, with the region "
                              "extractor's FEATS.json and FEATS_boxes.npy beside the features, to draw them")
        else:
            answer["note"] = ("this index has no region boxes (it was built from a feature file without the region "
                              "extractor's FEATS.json and FEATS_boxes.npy beside it): regions are shown by number")
        return answer

    # -- image files ------------------------------------------------------------------------------

    def image_path(self, state: Loaded, item: int) -> str:
        """The index's own file for `item`, refused unless the recorded path is the file itself: its real
        path (links resolved) must equal the recorded one, so a link anywhere on the way is refused and
        no recorded path can widen what is served (a folder rule can be widened by one stray path)."""
        self._item(state, item)
        if state.index.paths is None:
            raise Refused(f"index {self.folder} records no image files (built from features without the region "
                          "extractor's record beside them)", 404)
        path = state.index.paths[item]
        if not os.path.isabs(path) or os.path.normpath(path) != path or os.sep + ".." + os.sep in path + os.sep:
            raise Refused(f"id {item}: the index records a path that is not absolute and normal; refused", 403)
        real = os.path.realpath(path)
        if real != path:
            raise Refused(f"id {item}: its recorded path {path} goes through a link (to {real}); only files at their "
                          "own recorded path are served; refused", 403)
        if os.path.splitext(real)[1].lower() not in IMAGE_SUFFIXES:
            raise Refused(f"id {item}: {os.path.basename(path)} is not an image file by its name; refused", 403)
        if not os.path.isfile(real):
            raise Refused(f"id {item}: its image file {path} is missing", 404)
        return real

    def _image_size(self, state: Loaded, item: int):
        try:
            with Image.open(self.image_path(state, item)) as image:
                return list(image.size)
        except (Refused, OSError, ValueError):
            return None

    def image(self, item: int, full: bool = False, generation: str | None = None) -> tuple[str, str]:
        """(file, media type): the original file, or its thumbnail, made once and kept in the cache."""
        state = self.current(generation)
        path = self.image_path(state, item)
        if full:
            try:
                with Image.open(path) as image:
                    media = IMAGE_FORMATS.get(image.format)
                    image.load()                    # the whole file decodes: not just a name and a header
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise Refused(f"id {item}: {path} cannot be read as an image ({first_line(exc)})", 422) from exc
            if media is None:
                raise Refused(f"id {item}: {path} is a {image.format} image, which is not served full size", 422)
            return path, media
        try:
            os.makedirs(self.thumbnails, exist_ok=True)  # (a replacement index may be the first with images)
        except OSError as exc:
            raise Refused(f"the thumbnail cache {self.thumbnails} cannot be created ({exc.strerror or exc})", 503) \
                from exc
        stat = os.stat(path)
        key = hashlib.sha256(f"{path}\n{stat.st_size}\n{stat.st_mtime_ns}\n{THUMBNAIL}".encode()).hexdigest()[:24]
        thumbnail = os.path.join(self.thumbnails, f"{key}.jpg")
        if not _decodes(thumbnail):              # missing, or damaged in the cache (by a full disk, a user): remade
            partial = f"{thumbnail}.tmp-{os.getpid()}-{threading.get_ident()}"
            try:
                with Image.open(path) as image:
                    image.draft("RGB", (THUMBNAIL, THUMBNAIL))
                    image = image.convert("RGB")
                    image.thumbnail((THUMBNAIL, THUMBNAIL))
                    image.save(partial, "JPEG", quality=85)
                os.replace(partial, thumbnail)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                raise Refused(f"id {item}: {path} cannot be read as an image ({first_line(exc)})", 422) from exc
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
        return thumbnail, "image/jpeg"


def _decodes(path: str) -> bool:
    """Whether a cached thumbnail is there and decodes whole (a small JPEG: about a millisecond)."""
    try:
        with Image.open(path) as image:
            image.load()
        return image.format == "JPEG"
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
