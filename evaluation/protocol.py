"""Evaluation protocols: one split (Flickr30K 1K, validation) and COCO testall (5-fold 1K + 5K).

The split's files are read and checked by `pairs.load_eval_split` (a datasets.layouts.EvalSplit)
before any model is built; these functions then encode every image and caption once and score all
pairs."""

import logging
import time

import torch
from torch.utils.data import DataLoader, Subset

from datasets.batching import CaptionSet, Collate, ignore_stop_signals
from datasets.layouts import CAPTIONS_PER_IMAGE, EvalSplit
from devices import distributed
from .metrics import coco_five_fold, format_metrics, mean_metrics, retrieval_metrics
from .scoring import encode_items, score_all

logger = logging.getLogger("dimmatch")

COCO_FOLDS = 5
VALIDATION_MAX_IMAGES = 1000      # first_1k (config.options.VALIDATION_PROTOCOLS)


def _loader(dataset, batch_size: int, workers: int, pad_id: int) -> DataLoader:
    # a private generator keeps evaluation from drawing on the global RNG (exact resume)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=Collate(pad_id), generator=torch.Generator(), worker_init_fn=ignore_stop_signals)


def compute_split_scores(model, split_data, caption_encoder, device: torch.device, *, amp: str = "off",
                         batch_size: int = 128, workers: int = 2, mem_gb: float | None = None,
                         progress: bool = True, shard: bool = False):
    """Score matrix (images x captions) of a loaded split; every image and caption is encoded once.

    With `shard` (test.py under torchrun; every process must call it) each process encodes the
    split and scores its share of the caption shards, and the full matrix is summed onto rank 0
    (the other ranks get only their share). Validation during training runs on rank 0 alone."""
    was_training = model.training
    started = time.time()
    images, captions = encode_split(model, split_data, caption_encoder, device, amp=amp, batch_size=batch_size,
                                    workers=workers, progress=progress)
    encoded = time.time()
    world = distributed.world_size() if shard else 1
    sims = score_all(model.head, images, captions, device, mem_gb, amp, progress,
                     distributed.rank() if shard else 0, world)
    if world > 1:
        sims = distributed.sum_to_main(sims, device)
    model.train(was_training)
    info = {"images_encoded": len(images), "captions_encoded": len(captions),
            "encode_seconds": encoded - started, "score_seconds": time.time() - encoded}
    logger.info("encoded %d images and %d captions once each (%.1fs), scored %dx%d in %.1fs",
                len(images), len(captions), info["encode_seconds"], len(images), len(captions),
                info["score_seconds"])
    return sims, info


def encode_split(model, split_data, caption_encoder, device: torch.device, *, amp: str = "off",
                 batch_size: int = 128, workers: int = 2, progress: bool = True, global_vectors: bool = False):
    """(images, captions) as EncodedItems, each item encoded once, and with `global_vectors` their
    global embeddings too: (images, captions, image vectors, caption vectors). Leaves the model in
    eval mode."""
    model.eval()
    vectors = ([], []) if global_vectors else (None, None)
    images = encode_items(model, _loader(split_data.images, batch_size, workers, caption_encoder.pad_id), "images", device,
                          amp, progress, vectors[0])
    caption_items = encode_items(model, _loader(CaptionSet(split_data.captions, caption_encoder), batch_size, workers,
                                                caption_encoder.pad_id), "captions", device, amp, progress, vectors[1])
    if not global_vectors:
        return images, caption_items
    return images, caption_items, torch.cat(vectors[0]).numpy(), torch.cat(vectors[1]).numpy()


def evaluate_split(model, split_data: EvalSplit, caption_encoder, device: torch.device, **kwargs) -> dict:
    sims, info = compute_split_scores(model, split_data, caption_encoder, device, **kwargs)
    return {"metrics": retrieval_metrics(sims, split_data.captions_per_image), "info": info, "sims": sims}


def fold_subsets(split_data: EvalSplit, folds: int) -> list[EvalSplit]:
    """Each of `folds` equal consecutive folds of a split."""
    size, per_image = len(split_data.images) // folds, split_data.captions_per_image
    return [EvalSplit(Subset(split_data.images, range(fold * size, (fold + 1) * size)),
                      split_data.captions[fold * size * per_image:(fold + 1) * size * per_image], per_image,
                      f"{split_data.where}, fold {fold + 1}")
            for fold in range(folds)]


def validation_metrics(model, split_data, protocol: str, caption_encoder, device, **kwargs) -> dict:
    """The metrics that select the model: those of one block (`first_1k`: the split as loaded, its
    first 1,000 images), or of the last of five folds (`last_fold`) or their mean (`mean_5fold`),
    with every fold's metrics under 'folds'. Each fold is scored on its own (its diagonal block)."""
    if protocol == "first_1k":
        return evaluate_split(model, split_data, caption_encoder, device, **kwargs)["metrics"]
    folds = [evaluate_split(model, fold, caption_encoder, device, **kwargs)["metrics"]
             for fold in fold_subsets(split_data, COCO_FOLDS)]
    selected = folds[-1] if protocol == "last_fold" else mean_metrics(folds)
    return {**selected, "protocol": protocol, "folds": folds}


def fold_note(fold_images: int) -> str:
    """Folds of another size than COCO's 1,000 images give numbers not comparable with COCO 1K."""
    if fold_images == 1000:
        return ""
    return (f"\nnote: folds of {fold_images} images, not COCO's 1,000 (testall has 5,000): these 1K numbers are not "
            "comparable with published COCO 1K results")


def protocol_report(sims, coco_testall: bool, label: str, per_image: int = CAPTIONS_PER_IMAGE) -> tuple[dict, str]:
    """(metrics for the JSON report, printed table) of a score matrix under one protocol."""
    n_images, n_captions = sims.shape
    if coco_testall:
        folds = coco_five_fold(sims, COCO_FOLDS, per_image)
        full = retrieval_metrics(sims, per_image)
        mean_title = f"{label}: mean of {COCO_FOLDS} folds of {folds['fold_images']} images"
        text = (format_metrics(folds["mean"], mean_title) + "\n"
                + format_metrics(full, f"{label}: full {n_images} images") + fold_note(folds["fold_images"]))
        return {"five_fold_1k": folds["mean"], "full_5k": full, "folds": folds["folds"]}, text
    metrics = retrieval_metrics(sims, per_image)
    return metrics, format_metrics(metrics, f"{label}: {n_images} images, {n_captions} captions")
