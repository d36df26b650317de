"""Extraction of a collection into FEATS.npy / FEATS_boxes.npy / FEATS.json, resumable and shardable.

While it runs, everything lives in the work folder FEATS.npy.partial/ next to the output:

    features.npy   N x R x width float32, memory-mapped, every row at its image's position
    boxes.npy      N x R x 4 float32
    sizes.npy      N x 3 int32: width, height (upright), real regions
    state.npy      N uint8: 0 to do, 1 done, 2 skipped; set after the row's data is flushed
    skipped-*.jsonl, notes-*.jsonl   one line per skipped image / per image with a note, per rank
    plan.json      what is extracted (images, detector hash, protocol, regions): --resume checks it
    .lock          one process (or torchrun job) at a time

Rows are flushed and marked done after every --batch_size images, so a process stopped in any way
(a stop signal, SIGKILL, a power cut) loses at most that batch; SIGINT, SIGTERM and SIGUSR1 finish the
current image, flush, and exit with 128 + the signal. Under torchrun every rank takes a contiguous
share of the rows still to do and writes them into the same mapped files. The outputs appear only
when every row is done: skipped rows are left out, FEATS.json is written last, the work folder is
removed.
"""

import hashlib
import json
import logging
import os
import shutil
import signal
import time

import numpy as np
import torch
from tqdm import tqdm

from devices import distributed
from errors import ConfigError, DataError, Stopped
from .images import Unreadable, read_rgb
from .protocols import Unusable, extract

logger = logging.getLogger("dimmatch")

FORMAT = "dimmatch-regions"
VERSION = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
TODO, DONE, SKIPPED = 0, 1, 2


def output_paths(out: str) -> dict:
    stem = out[:-4]
    return {"features": out, "boxes": stem + "_boxes.npy", "json": stem + ".json", "work": out + ".partial"}


def images_sha(images: list[tuple[str, str]]) -> str:
    return hashlib.sha256("\n".join(f"{name}\t{path}" for name, path in images).encode("utf-8")).hexdigest()


class _Decoded(torch.utils.data.Dataset):
    """Images decoded in DataLoader workers: (row, rgb array or the reason it is skipped)."""

    def __init__(self, images, rows):
        self.images, self.rows = images, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = int(self.rows[index])
        try:
            return row, read_rgb(self.images[row][1])
        except Unreadable as exc:
            return row, str(exc)


def _collate(items):
    return items


class StopRequest:
    """A stop signal is noted, and acted on once `doing` is done: rows are never left half written."""

    def __init__(self, doing: str = "finishing this image, flushing, then stopping"):
        self.signum, self.doing = None, doing
        self.previous = {}

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt("second stop signal: the rows flushed so far are kept; --resume continues")
        self.signum = signum
        logger.warning("%s: %s (again: stop at once)", signal.Signals(signum).name, self.doing)


def _worker_init(worker_id: int) -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class Extraction:
    def __init__(self, out: str, images: list, plan: dict, regions: int, width: int):
        self.paths = output_paths(out)
        self.work = self.paths["work"]
        self.images, self.plan, self.regions, self.width = images, plan, regions, width

    # ---- the work folder -------------------------------------------------------------------
    def clear(self) -> None:
        """What an earlier, stopped extraction left (--overwrite); the lock file stays."""
        for name in os.listdir(self.work):
            if name != ".lock":
                path = os.path.join(self.work, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    def create(self) -> None:
        os.makedirs(self.work, exist_ok=True)
        count = len(self.images)
        for name, shape, dtype in self._arrays(count):
            np.lib.format.open_memmap(os.path.join(self.work, name), mode="w+", dtype=dtype, shape=shape).flush()
        _write_json(os.path.join(self.work, "plan.json"), self.plan)

    def _arrays(self, count):
        return (("features.npy", (count, self.regions, self.width), np.float32),
                ("boxes.npy", (count, self.regions, 4), np.float32),
                ("sizes.npy", (count, 3), np.int32), ("state.npy", (count,), np.uint8))

    def check_resumable(self) -> None:
        path = os.path.join(self.work, "plan.json")
        try:
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
        except (OSError, ValueError) as exc:
            raise DataError(f"{self.work} holds no readable plan.json ({exc}); start again with --overwrite") from exc
        for key in ("images_sha256", "detector_sha256", "protocol", "regions", "width", "images"):
            if saved.get(key) != self.plan.get(key):
                what = {"images_sha256": "the image list", "images": "the number of images",
                        "detector_sha256": "the detector's weights"}.get(key, key)
                raise ConfigError(f"--resume: {what} differs from the stopped extraction in {self.work} "
                                  f"({saved.get(key)!r} there, {self.plan.get(key)!r} now); give the same "
                                  "options, or --overwrite to start again")
        for name, shape, dtype in self._arrays(len(self.images)):
            try:
                array = np.load(os.path.join(self.work, name), mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise DataError(f"{self.work}/{name} is damaged ({exc}); start again with --overwrite") from exc
            if array.shape != shape or array.dtype != dtype:
                raise DataError(f"{self.work}/{name} has shape {array.shape}, not {shape}; start again with "
                                "--overwrite")

    def open(self):
        return {name[:-4]: np.load(os.path.join(self.work, name), mmap_mode="r+")
                for name, _, _ in self._arrays(len(self.images))}

    # ---- the work --------------------------------------------------------------------------
    def run(self, model, protocol: str, batch_size: int, workers: int, progress: bool = True) -> dict:
        arrays = self.open()
        state = arrays["state"]
        todo = np.flatnonzero(state == TODO)
        rank, world = distributed.rank(), distributed.world_size()
        mine = np.array_split(todo, world)[rank]
        done_before = int((state != TODO).sum())
        if rank == 0 and done_before:
            logger.info("resuming: %d of %d images done, %d to do", done_before, len(state), len(todo))
        if not len(mine):          # nothing left here (a --resume of a finished run): no workers to start
            return {"images": 0, "seconds": 0.0}
        loader = torch.utils.data.DataLoader(_Decoded(self.images, mine), batch_size=batch_size, shuffle=False,
                                             num_workers=workers, collate_fn=_collate,
                                             worker_init_fn=_worker_init if workers else None)
        skipped_log = os.path.join(self.work, f"skipped-{rank}.jsonl")
        notes_log = os.path.join(self.work, f"notes-{rank}.jsonl")
        started, count, stop = time.perf_counter(), 0, None
        with StopRequest() as request, tqdm(total=len(mine), desc="regions", disable=not progress or rank != 0) as bar:
            for batch in loader:
                finished = []
                for row, item in batch:
                    if not isinstance(item, str):
                        try:
                            out = extract(model, item, self.regions, protocol)
                        except Unusable as exc:
                            item = str(exc)
                        except RuntimeError as exc:
                            # only the device's own "out of memory" is this image's (too large for it); a
                            # host MemoryError or any other failure is not, and stops the run
                            if "out of memory" not in str(exc):
                                raise
                            item = f"out of memory while extracting it ({item.shape[1]} x {item.shape[0]} pixels)"
                    if isinstance(item, str):
                        name = self.images[row][0]
                        logger.warning("skipping %s: %s", name, item)
                        _append(skipped_log, {"row": row, "name": name, "reason": item})
                        finished.append((row, SKIPPED))
                    else:
                        arrays["features"][row] = out.features
                        arrays["boxes"][row] = out.boxes
                        arrays["sizes"][row] = (item.shape[1], item.shape[0], out.count)
                        if out.note:
                            _append(notes_log, {"row": row, "name": self.images[row][0], "note": out.note})
                        finished.append((row, DONE))
                    count += 1
                    bar.update(1)
                    if request.signum is not None:
                        break
                self._commit(arrays, finished)
                if request.signum is not None:
                    stop = request.signum
                    break
        seconds = time.perf_counter() - started
        left = int((state == TODO).sum())
        if stop is not None and left == 0:     # the signal came with the last image: the outputs are written
            logger.warning("%s came after the last image: writing the outputs", signal.Signals(stop).name)
        elif stop is not None:
            raise Stopped(stop, f"{count} image{'s' if count != 1 else ''} done in this run, {left} left; the work is kept in "
                                f"{self.work}: run the same command with --resume to continue")
        return {"images": count, "seconds": seconds}

    def _commit(self, arrays, finished) -> None:
        """Flush the rows, then mark them: a row marked done is on disk."""
        for name in ("features", "boxes", "sizes"):
            arrays[name].flush()
        for row, value in finished:
            arrays["state"][row] = value
        arrays["state"].flush()

    # ---- the outputs -----------------------------------------------------------------------
    def finish(self, record: dict, overwrite: bool) -> dict:
        arrays = {name: np.load(os.path.join(self.work, f"{name}.npy"), mmap_mode="r")
                  for name in ("features", "boxes", "sizes", "state")}
        state = arrays["state"]
        if (state == TODO).any():
            raise DataError(f"{int((state == TODO).sum())} images of {self.work} are not done; run again with "
                            "--resume")
        skipped = sorted((item for item in _read_logs(self.work, "skipped") if state[item["row"]] == SKIPPED),
                         key=lambda item: item["row"])
        notes = {item["row"]: item["note"] for item in _read_logs(self.work, "notes")}
        kept = np.flatnonzero(state == DONE)
        if len(kept) == 0:
            shutil.rmtree(self.work, ignore_errors=True)
            raise DataError(f"every image was skipped (the first: {skipped[0]['name']}: {skipped[0]['reason']}); "
                            "nothing written")
        for target in (self.paths["features"], self.paths["boxes"], self.paths["json"]):
            if os.path.exists(target) and not overwrite:
                raise ConfigError(f"{target} appeared while extracting (another command?); nothing was replaced")
        for name, target in (("features", self.paths["features"]), ("boxes", self.paths["boxes"])):
            source = os.path.join(self.work, f"{name}.npy")
            if len(kept) == len(state):
                os.replace(source, target)
                continue
            partial = target + f".tmp-{os.getpid()}.npy"
            whole = np.load(source, mmap_mode="r")
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=whole.dtype, shape=(len(kept), *whole.shape[1:]))
            for first in range(0, len(kept), 256):
                out[first:first + 256] = whole[kept[first:first + 256]]
            out.flush()
            del out
            os.replace(partial, target)
        images = []
        for row in kept:
            name, path = self.images[row]
            width, height, count = (int(v) for v in arrays["sizes"][row])
            entry = {"name": name, "path": path, "width": width, "height": height, "regions": count}
            if row in notes:
                entry["note"] = notes[row]
            images.append(entry)
        record = dict(record, images=images, skipped=[{"name": s["name"], "reason": s["reason"]} for s in skipped])
        _write_json(self.paths["json"], record)
        shutil.rmtree(self.work, ignore_errors=True)
        return record


def _append(path: str, item: dict) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(item) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_logs(work: str, kind: str) -> list:
    items, seen = [], set()
    for name in sorted(os.listdir(work)):
        if name.startswith(kind + "-") and name.endswith(".jsonl"):
            with open(os.path.join(work, name), encoding="utf-8") as handle:
                for line in handle:
                    try:
                        item = json.loads(line)
                    except ValueError:          # a line cut short by a kill: its row is redone
                        continue
                    if item["row"] not in seen:
                        seen.add(item["row"])
                        items.append(item)
    return items     # a row logged twice (redone after a kill) counts once


def _write_json(path: str, data: dict) -> None:
    partial = f"{path}.tmp-{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(partial, path)
