"""A collection indexed once on disk, for collections larger than memory.

The index is a folder:

    index.json    format, version, provenance (checkpoint and collection identities), feature dtype,
                  shapes, what the first stage is
    names.txt     one item name a line, in row order
    local.npy     the head's prepared image features, (N, regions, width) or (N, width), fp16 or fp32,
                  memory-mapped: a query reads only the rows it re-ranks
    global.npy    the first stage's unit vectors (N, d), float32
    global.faiss  the FAISS index over them (flat, ivf or hnsw)
    paths.txt     (version 4, when known) the absolute path of each item's image file, in row order
    boxes.npy     (version 4, when known) region boxes (N, regions, 4) float32, x1 y1 x2 y2 in the
                  original image's pixels, rows aligned with names.txt

Version 3 indexes (no paths, no boxes) are still read.

It is written in chunks into a temporary folder next to the target and renamed into place when
complete, so a reader never sees half an index and an interrupted build leaves nothing behind (a
build killed outright leaves its temporary folder, which the next build into the same place
removes). Its manifest (outputs.manifest) lists these files: --overwrite replaces an index folder only
when it holds nothing else.
"""

import json
import os
import re
import shutil
import time
import zipfile

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.batching import Collate
from errors import ConfigError, DataError, first_line
from evaluation.scoring import EncodedItems
from outputs import manifest
from outputs.folders import alive
from provenance import FOLDER_FILES, read_record
from .search import build_index, faiss, search

FORMAT = "dimmatch-index"
VERSION = 4
READABLE = (3, 4)
REQUIRED_FILES = ("index.json", "names.txt", "local.npy", "global.npy", "global.faiss")
FILES = REQUIRED_FILES + ("paths.txt", "boxes.npy")      # the last two when the items' files are known
REGIONS_FORMAT = "dimmatch-regions"


def item_files(option: str, path: str, names: list[str]) -> tuple[list | None, object]:
    """(absolute image paths or None, boxes or None) of the items a collection option reads:
    --images DIR: the files read, in name order (boxes None); --regions FEATS.npy: the images and
    boxes of FEATS.json and FEATS_boxes.npy beside it, when both are there (a region extractor's
    record, rows aligned with FEATS.npy), counts checked."""
    count = len(names)
    if option == "images":
        return [os.path.join(os.path.abspath(path), name) for name in names], None
    try:
        regions = np.load(path, mmap_mode="r").shape[1]
    except (OSError, ValueError, IndexError):
        regions = None
    stem = path[:-len(".npy")] if path.endswith(".npy") else path
    described, boxes_file = f"{stem}.json", f"{stem}_boxes.npy"
    if not os.path.isfile(described) or not os.path.isfile(boxes_file):
        return None, None
    try:
        with open(described, encoding="utf-8") as handle:
            record = json.load(handle)
        if not isinstance(record, dict) or record.get("format") != REGIONS_FORMAT or record.get("version") != 1:
            found = (record.get("format"), record.get("version")) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{described} is not a region record this code reads (format and version {found}; "
                            f"expected {REGIONS_FORMAT} version 1)")
        paths = [str(entry["path"]) for entry in record["images"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{described} is not a readable region record ({first_line(exc)}); expected format "
                        f"{REGIONS_FORMAT} with an 'images' list of name, path, width, height") from exc
    try:
        boxes = np.load(boxes_file, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{boxes_file} is not a readable .npy of boxes ({first_line(exc)})") from exc
    if len(paths) != count or boxes.ndim != 3 or boxes.shape[0] != count or boxes.shape[2] != 4 or (
            regions is not None and boxes.shape[1] != regions):
        raise DataError(f"{described} lists {len(paths)} images and {boxes_file} has shape {tuple(boxes.shape)} for "
                        f"the {count} rows{'' if regions is None else f' of {regions} regions'} of {path}; "
                        "they must match row for row (N x regions x 4)")
    if any("\n" in item or not os.path.isabs(item) for item in paths):
        raise DataError(f"{described}: every image path must be absolute and on one line")
    return paths, np.asarray(boxes, dtype=np.float32)


def check_replaceable(folder: str, option: str = "--out") -> None:
    """An existing folder that --overwrite may replace: an index of ours (its manifest, or the
    index.json of an index from before manifests), holding nothing else."""
    recorded = manifest.owned(folder, PROGRAM)
    try:
        with open(os.path.join(folder, "index.json"), encoding="utf-8") as handle:
            ours = bool(recorded) or json.load(handle).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ours = False
    others = sorted(set(os.listdir(folder)) - (recorded or set(FILES)) - {manifest.MANIFEST})
    if not ours or others:
        what = f"holds {others[0]}, which is not part of an index" if ours else "is not an index written by this tool"
        raise ConfigError(f"{option} {folder} {what}; --overwrite replaces only an index folder whole; "
                          "write elsewhere")


DTYPES = {"fp16": np.float16, "fp32": np.float32}
PROGRAM = "retrieve.py"


def remove_abandoned(folder: str) -> None:
    """The temporary folders (FOLDER.tmp-PID, FOLDER.old-PID) of builds into `folder` whose process
    has ended without cleaning up (killed outright)."""
    parent, base = os.path.split(os.path.abspath(folder))
    if not os.path.isdir(parent):
        return
    pattern = re.compile(re.escape(base) + r"\.(tmp|old)-(\d+)$")
    for name in os.listdir(parent):
        found = pattern.match(name)
        if found and not alive(int(found.group(2))) and os.path.isdir(os.path.join(parent, name)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def build(folder: str, chunks, count: int, names: list[str], provenance: dict, *, dtype: str = "fp16",
          kind: str = "flat", first_stage: str, replace: bool = False, progress: bool = True,
          paths: list[str] | None = None, boxes: np.ndarray | None = None) -> dict:
    """Write an index folder at `folder` from `chunks`, an iterator of (prepared local features,
    global vectors) for consecutive items, `count` in all (see `encoded_chunks`), with the items'
    image `paths` and region `boxes` when known. With `replace`, an index already there is replaced
    once the new one is complete."""
    partial, previous = f"{folder}.tmp-{os.getpid()}", f"{folder}.old-{os.getpid()}"
    remove_abandoned(folder)
    try:
        manifest.claim(partial, PROGRAM, REQUIRED_FILES + (("paths.txt",) if paths is not None else ())
                       + (("boxes.npy",) if boxes is not None else ()))
        meta = _write(partial, chunks, count, names, provenance, dtype, kind, first_stage, progress)
        if paths is not None:
            with open(os.path.join(partial, "paths.txt"), "w", encoding="utf-8") as handle:
                handle.write("".join(f"{os.path.abspath(path)}\n" for path in paths))
        if boxes is not None:
            np.save(os.path.join(partial, "boxes.npy"), np.asarray(boxes, dtype=np.float32))
        meta.update(paths=paths is not None, boxes=boxes is not None)
        with open(os.path.join(partial, "index.json"), "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2, sort_keys=True)
        if os.path.exists(folder):
            if not replace:
                raise ConfigError(f"--out {folder} appeared while the index was being built (another build?); "
                                  "nothing was replaced")
            os.rename(folder, previous)
        os.rename(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(previous, ignore_errors=True)
    return meta


def encoded_chunks(model, dataset, shortlist_model=None, batch_size: int = 128,
                   device: torch.device = torch.device("cpu"), workers: int = 0):
    """(prepared features, global vectors) of `dataset`, batch by batch; the global vectors are
    `shortlist_model`'s when given, else the model's own."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=Collate(0))
    with torch.inference_mode():
        for batch in loader:
            prepared, global_vectors = _encode_batch(model, batch, device)
            if shortlist_model is not None:
                global_vectors = _encode_batch(shortlist_model, batch, device)[1]
            yield prepared.float().cpu().numpy(), global_vectors.float().cpu().numpy()


def _encode_batch(model, batch, device):
    images = batch["images"].to(device)
    lengths = None if batch["image_lengths"] is None else batch["image_lengths"].to(device)
    features, lengths = model.encode_images(images, lengths)
    prepared = model.head.prepare_images(features, lengths)
    return prepared, model.global_vectors(features, lengths, prepared)


def _write(folder, chunks, count, names, provenance, dtype, kind, first_stage, progress) -> dict:
    local = vectors = None
    row = 0
    started = time.perf_counter()
    with tqdm(total=count, desc="index", disable=not progress) as bar:
        for prepared, global_vectors in chunks:
            if local is None:
                local = np.lib.format.open_memmap(os.path.join(folder, "local.npy"), mode="w+",
                                                  dtype=DTYPES[dtype], shape=(count, *prepared.shape[1:]))
                vectors = np.lib.format.open_memmap(os.path.join(folder, "global.npy"), mode="w+", dtype=np.float32,
                                                    shape=(count, global_vectors.shape[1]))
            local[row:row + len(prepared)] = prepared
            vectors[row:row + len(prepared)] = global_vectors
            row += len(prepared)
            bar.update(len(prepared))
    if row != count:
        raise DataError(f"the collection gave {row} items, not the {count} expected")
    local.flush()
    vectors.flush()
    encode_seconds = time.perf_counter() - started
    index = build_index(vectors, kind)
    faiss().write_index(index, os.path.join(folder, "global.faiss"))
    with open(os.path.join(folder, "names.txt"), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in names))
    meta = {"format": FORMAT, "version": VERSION, "provenance": provenance, "dtype": dtype, "items": count,
            "local_shape": list(local.shape[1:]), "global_dim": int(vectors.shape[1]), "index": kind,
            "first_stage": first_stage, "build_seconds": {"features": round(encode_seconds, 3),
                                                          "index": round(time.perf_counter() - started
                                                                         - encode_seconds, 3)}}
    with open(os.path.join(folder, "index.json"), "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2, sort_keys=True)
    return meta


def _old_index_file(path: str) -> bool:
    """Whether the file `path` is an index of format version 2 or older: a dict that torch.save
    wrote (a zip holding data.pkl) naming this format; read as bytes, nothing is unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name == "data.pkl" or name.endswith("/data.pkl")]
            return bool(pickles) and FORMAT.encode() in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return False


def _not_an_index(folder: str) -> str:
    """What a folder without index.json is, when it is something of ours: a model folder or a
    training run (a checkpoint, from which an index is built), or else what it holds."""
    how = ("build an index of your collection with it: tools/retrieve.py index --checkpoint {} --regions FEATS.npy "
           "(or --images DIR) --out NAME.index, then give --index NAME.index")
    if all(os.path.isfile(os.path.join(folder, name)) for name in FOLDER_FILES):
        return f"{folder} is a model folder ({' + '.join(FOLDER_FILES)}), not an index: " + how.format(folder)
    run = [name for name in ("model_best", "checkpoint_last.pth", "model_best.pth")
           if os.path.exists(os.path.join(folder, name))]
    if run:
        return (f"{folder} is a training run's folder, not an index: "
                + how.format(os.path.join(folder, run[0])))
    held = "it is empty" if not os.listdir(folder) else "it holds other files"
    return f"{folder} is not an index (no index.json; {held}): an index is the folder tools/retrieve.py index wrote"


class CollectionIndex:
    """An index folder opened for queries: the FAISS index in memory, the local features mapped."""

    def __init__(self, folder: str):
        if os.path.isfile(folder):
            if _old_index_file(folder):
                raise DataError(f"{folder} is an index of format version 2 or older (one file); this code reads "
                                f"version {VERSION} (a folder): rebuild it with tools/retrieve.py index")
            raise DataError(f"{folder} is a file, not an index: an index is a folder written by tools/retrieve.py "
                            "index")
        path = os.path.join(folder, "index.json")
        if not os.path.isdir(folder):
            raise DataError(f"index {folder} does not exist (an index is the folder tools/retrieve.py index wrote)")
        if not os.path.isfile(path):
            raise DataError(_not_an_index(folder))
        try:
            with open(path, encoding="utf-8") as handle:
                meta = json.load(handle)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable index description ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{folder} is not an index written by tools/retrieve.py index")
        if meta.get("version") not in READABLE:
            raise DataError(f"{folder} is an index of format version {meta.get('version')}; this code reads "
                            f"versions {' and '.join(map(str, READABLE))}: rebuild it with tools/retrieve.py index")
        self.folder, self.meta = folder, meta
        self.provenance = read_record(meta["provenance"], folder)
        try:
            with open(os.path.join(folder, "names.txt"), encoding="utf-8") as handle:
                self.names = handle.read().split("\n")[:-1]
            self.local = np.load(os.path.join(folder, "local.npy"), mmap_mode="r")
            self.index = faiss().read_index(os.path.join(folder, "global.faiss"))
            self.paths = self.boxes = None
            if meta.get("paths"):
                with open(os.path.join(folder, "paths.txt"), encoding="utf-8") as handle:
                    self.paths = handle.read().split("\n")[:-1]
            if meta.get("boxes"):
                self.boxes = np.load(os.path.join(folder, "boxes.npy"), mmap_mode="r")
        except (OSError, ValueError, RuntimeError) as exc:   # a file missing, cut short or not ours
            raise DataError(f"index {folder} is damaged ({first_line(exc)}); rebuild it with tools/retrieve.py "
                            "index") from exc
        if len(self.names) != len(self.local) or self.index.ntotal != len(self.local) or (
                self.paths is not None and len(self.paths) != len(self.local)) or (
                self.boxes is not None and len(self.boxes) != len(self.local)):
            extra = "".join(f", {len(part)} {what}" for part, what in ((self.paths, "paths"), (self.boxes, "box rows"))
                            if part is not None)
            raise DataError(f"index {folder} is incomplete: {len(self.names)} names, {len(self.local)} feature rows, "
                            f"{self.index.ntotal} vectors{extra}")

    def __len__(self) -> int:
        return len(self.local)

    def items(self, rows: np.ndarray) -> EncodedItems:
        """The prepared features of `rows` (read from disk; sorted rows read fastest) as float32 items."""
        block = torch.from_numpy(np.asarray(self.local[rows], dtype=np.float32))
        lengths = None if block.dim() == 2 else torch.full((len(rows),), block.shape[1])
        return EncodedItems.from_padded(block, lengths)

    def chunks(self, size: int):
        """(start, items) over the whole collection, `size` rows at a time (exhaustive scoring)."""
        for start in range(0, len(self), size):
            yield start, self.items(np.arange(start, min(len(self), start + size)))

    def search(self, vectors: np.ndarray, k: int) -> np.ndarray:
        return search(self.index, vectors, k)[1]
