"""Extended COCO 5K metrics: ECCV Caption mAP@R, R-Precision and R@1, and CxC R@1.

COCO Recall@K counts only the 5 original captions of an image as its positives, although other
test captions and images match too. ECCV Caption (Chun et al., 2022) and CxC (Parekh et al., 2021)
annotate such extra positives; their files ship in the `eccv_caption` package (0.1.0), which we
read directly (its own metric code has known bugs in 0.1.0). For a query with R positives:
R-Precision is the precision of the top R items; mAP@R = 1/R sum_{r<=R} P@r 1[item r positive];
R@1 is whether the top item is a positive. Ties with a negative count against the model, as in
our Recall@K.

Rows and columns of our score matrix are mapped to COCO image and caption ids, and the mapping is
checked against the package's files; a split whose ids do not resolve exactly is an error.
"""

import importlib.util
import json
import os

import numpy as np

from datasets.precomp import CAPTIONS_PER_IMAGE
from errors import ConfigError, DataError

PACKAGE = "eccv_caption"


def annotation_folder() -> str:
    """The data folder of the installed eccv_caption package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"--extended needs the {PACKAGE} package for its annotation files: "
                          f"pip install --no-deps {PACKAGE}==0.1.0")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def _positives(folder: str, name: str) -> dict:
    out = {}
    for direction in ("image_to_caption", "caption_to_image"):
        path = os.path.join(folder, f"{name}_{direction}.json")
        try:
            with open(path, encoding="utf-8") as handle:
                out[direction] = {int(key): [int(v) for v in values] for key, values in json.load(handle).items()}
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} cannot be read as a {PACKAGE} annotation file ({exc})") from exc
    return out


def load_annotations(folder: str | None = None) -> dict:
    folder = folder or annotation_folder()
    return {"test_caption_ids": np.load(os.path.join(folder, "coco_test_ids.npy")).astype(np.int64),
            **{name: _positives(folder, name) for name in ("original", "eccv", "cxc")}}


def row_ids(ids: np.ndarray, n_images: int, annotations: dict, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(COCO image id per row, COCO caption id per column) from an id list: caption ids (5 per
    image), image ids repeated per caption, or image ids once per image. Image ids alone fix the
    images' order; their captions are then taken in the package's test order, which must agree."""
    caption_to_image = annotations["original"]["caption_to_image"]
    image_to_caption = annotations["original"]["image_to_caption"]
    test_ids = annotations["test_caption_ids"]
    n_captions = CAPTIONS_PER_IMAGE * n_images
    known = [int(i) in caption_to_image for i in ids]
    if len(ids) == n_captions and sum(known) > len(ids) // 2:           # mostly caption ids: all must be
        missing = [int(i) for i, k in zip(ids, known) if not k]
        if missing:
            raise DataError(f"{source}: {len(missing)} caption ids are not COCO 5K test captions (e.g. {missing[0]})")
        caption_ids = ids
        owners = np.array([caption_to_image[int(i)][0] for i in ids]).reshape(n_images, CAPTIONS_PER_IMAGE)
        split = np.flatnonzero((owners != owners[:, :1]).any(1))
        if len(split):
            raise DataError(f"{source}: the 5 captions of row {split[0]} belong to different COCO images "
                            f"({sorted(set(owners[split[0]].tolist()))})")
        image_ids = owners[:, 0]
    else:
        if len(ids) == n_captions:
            blocks = ids.reshape(n_images, CAPTIONS_PER_IMAGE)
            if (blocks != blocks[:, :1]).any():
                raise DataError(f"{source}: {len(ids)} ids that are neither COCO test caption ids nor one image id "
                                "repeated for each image's 5 captions")
            image_ids = blocks[:, 0]
        elif len(ids) == n_images:
            image_ids = ids
        else:
            raise DataError(f"{source} has {len(ids)} ids for {n_images} images and {n_captions} captions")
        unknown = [int(i) for i in image_ids if int(i) not in image_to_caption]
        if unknown:
            raise DataError(f"{source}: {len(unknown)} image ids are not COCO 5K test images (e.g. {unknown[0]})")
        package_images = np.array([caption_to_image[int(i)][0] for i in test_ids[::CAPTIONS_PER_IMAGE]])
        if len(package_images) != n_images or (package_images != image_ids).any():
            raise DataError(f"{source}: the images are not in the order of {PACKAGE}'s coco_test_ids.npy, so their "
                            "captions cannot be identified; give a file of caption ids (--ids_file)")
        caption_ids = test_ids
    if set(caption_ids.tolist()) != set(test_ids.tolist()):
        raise DataError(f"{source}: the captions are not the {len(test_ids)} COCO 5K test captions of {PACKAGE}")
    return np.asarray(image_ids, dtype=np.int64), np.asarray(caption_ids, dtype=np.int64)


def positive_positions(row: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """0-based positions of the positive columns in the ranking of `row`, best first, a negative
    tied with a positive ranking before it (ties count against the model)."""
    relevant = np.zeros(len(row), dtype=bool)
    relevant[positives] = True
    scores = np.sort(row[positives])[::-1]
    above = (row[None, :] > scores[:, None]).sum(1)
    tied_negatives = ((row[None, :] == scores[:, None]) & ~relevant[None, :]).sum(1)
    positions = above + tied_negatives
    # positives tied with each other take consecutive places
    first = np.searchsorted(positions, positions, side="left")
    return positions + np.arange(len(positions)) - first


def query_metrics(sims: np.ndarray, query_ids: np.ndarray, item_ids: np.ndarray, positives: dict) -> dict:
    """mAP@R, R-Precision and R@1 (in %) over the queries that have positives in `positives`."""
    row_of = {int(q): r for r, q in enumerate(query_ids)}
    column_of = {int(i): c for c, i in enumerate(item_ids)}
    maps, precisions, hits = [], [], []
    for query, items in positives.items():
        if query not in row_of:
            raise DataError(f"query id {query} of the annotations has no row in the score matrix")
        # R counts every annotated positive, as the package does, although 2 of ECCV Caption's 22,550
        # image-to-caption positives are not among the 25,000 test captions and cannot be retrieved
        r = len(set(items))
        columns = np.array(sorted({column_of[i] for i in items if i in column_of}), dtype=np.int64)
        positions = positive_positions(sims[row_of[query]], columns) if len(columns) else np.zeros(0, np.int64)
        within = positions[positions < r]
        maps.append(float((np.arange(1, len(within) + 1) / (within + 1)).sum() / r))
        precisions.append(len(within) / r)
        hits.append(float(len(positions) > 0 and positions[0] == 0))
    return {"map_at_r": 100 * float(np.mean(maps)), "r_precision": 100 * float(np.mean(precisions)),
            "r1": 100 * float(np.mean(hits)), "queries": len(maps)}


def extended_metrics(sims: np.ndarray, image_ids: np.ndarray, caption_ids: np.ndarray, annotations: dict) -> dict:
    eccv, cxc = annotations["eccv"], annotations["cxc"]
    return {
        "eccv": {"i2t": query_metrics(sims, image_ids, caption_ids, eccv["image_to_caption"]),
                 "t2i": query_metrics(sims.T, caption_ids, image_ids, eccv["caption_to_image"])},
        "cxc_r1": {"i2t": query_metrics(sims, image_ids, caption_ids, cxc["image_to_caption"])["r1"],
                   "t2i": query_metrics(sims.T, caption_ids, image_ids, cxc["caption_to_image"])["r1"]},
    }


def format_extended(metrics: dict) -> str:
    eccv = metrics["eccv"]
    lines = [f"ECCV Caption {d}: mAP@R {eccv[d]['map_at_r']:.1f}  R-P {eccv[d]['r_precision']:.1f}  "
             f"R@1 {eccv[d]['r1']:.1f}  ({eccv[d]['queries']} queries)" for d in ("i2t", "t2i")]
    lines.append(f"CxC R@1: i2t {metrics['cxc_r1']['i2t']:.1f}  t2i {metrics['cxc_r1']['t2i']:.1f}")
    return "\n".join(lines)
