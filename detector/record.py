"""The record beside a regions file (FEATS.json, FEATS_boxes.npy), read back by other tools.

`regions_record(path)` gives (record, boxes) for FEATS.npy when tools/extract_regions.py wrote it
(format dimmatch-regions, one image entry per row, boxes of the same rows), else None: a feature
file of another origin (SCAN's) has neither, and is used as before.
"""

import json
import os

import numpy as np

from .extraction import FORMAT


def regions_record(path: str, rows: int | None = None):
    stem = path[:-4] if path.endswith(".npy") else path
    record_path, boxes_path = stem + ".json", stem + "_boxes.npy"
    if not (os.path.isfile(record_path) and os.path.isfile(boxes_path)):
        return None
    try:
        with open(record_path, encoding="utf-8") as handle:
            record = json.load(handle)
        boxes = np.load(boxes_path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("images"), list):
        return None
    if len(record["images"]) != len(boxes) or (rows is not None and len(boxes) != rows):
        return None
    return record, boxes
