"""Evaluation protocols: one split (Flickr30K 1K, validation) and COCO testall (5-fold 1K + 5K).

The split's files are read and checked by `pairs.load_eval_split` before any model
is built; these functions then encode every image and caption once and score all pairs."""

import logging
import time

import torch
from torch.utils.data import DataLoader

from datasets.batching import CaptionSet, Collate, ignore_stop_signals
from devices import distributed
from datasets.precomp import CAPTIONS_PER_IMAGE
from .metrics import coco_five_fold, format_metrics, mean_metrics, retrieval_metrics, two_stage_metrics
from .scoring import encode_items, score_all

logger = logging.getLogger("dimmatch")

COCO_FOLDS = 5
# Model selection during training (training.validation): the first 1,000 images of the validation
# split (the released region code, VSE-infinity's dev loader), or the whole split in 5 folds with the
# last fold's rSum (what the released ESL-CLIP COCO trainer returns) or their mean rSum selecting.
VALIDATION_MAX_IMAGES = 1000


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
    image_set, captions = split_data
    model.eval()
    vectors = ([], []) if global_vectors else (None, None)
    images = encode_items(model, _loader(image_set, batch_size, workers, caption_encoder.pad_id), "images", device,
                          amp, progress, vectors[0])
    caption_items = encode_items(model, _loader(CaptionSet(captions, caption_encoder), batch_size, workers,
                                                caption_encoder.pad_id), "captions", device, amp, progress, vectors[1])
    if not global_vectors:
        return images, caption_items
    return images, caption_items, torch.cat(vectors[0]).numpy(), torch.cat(vectors[1]).numpy()


def two_stage_report(head, encoded, first_stage, k: int, kind: str, coco_testall: bool, label: str,
                     device: torch.device, mem_gb: float | None = None, amp: str = "off", progress: bool = True):
    """(metrics, printed table, re-ranked shortlists of the whole split) of two-stage retrieval: the
    first stage's global vectors (images, captions) shortlist K items per query, the head re-ranks.
    COCO testall: each 1K fold on its own (its shortlists within the fold), and the whole 5K."""
    from retrieval.two_stage import rerank, shortlist
    images, captions = encoded
    image_vectors, caption_vectors = first_stage
    n_images = len(images)

    def run(first: int, stop: int):
        lists = shortlist(image_vectors[first:stop], caption_vectors[first * 5:stop * 5], k, kind)
        result = rerank(head, images.subset(first, stop), captions.subset(first * 5, stop * 5), lists, device,
                        mem_gb, amp, progress)
        metrics = two_stage_metrics(lists.i2t, result.i2t_scores, lists.t2i, result.t2i_scores)
        return {**metrics, "two_stage": result.cost(stop - first, 5 * (stop - first))}, result

    full, whole = run(0, n_images)
    cost = full["two_stage"]
    line = (f"two-stage, K = {cost['k']} ({cost['index']} index): {cost['pairs_scored']:,} pairs scored by the head "
            f"of {cost['exhaustive_pairs']:,} ({cost['exhaustive_pairs'] / max(1, cost['pairs_scored']):.1f}x fewer); "
            f"shortlists {cost['shortlist_seconds']:.2f}s, re-ranking {cost['rerank_seconds']:.2f}s"
            + (f"; the index holds {100 * cost['index_recall_vs_exact']:.1f}% of the exact shortlists"
               if cost["index_recall_vs_exact"] is not None else ""))
    if not coco_testall:
        return full, format_metrics(full, f"{label}: {n_images} images, {5 * n_images} captions") + "\n" + line, whole
    size = n_images // COCO_FOLDS
    folds = [run(fold * size, (fold + 1) * size)[0] for fold in range(COCO_FOLDS)]
    mean = mean_metrics(folds)
    text = (format_metrics(mean, f"{label}: mean of 5 folds of {size} images") + "\n"
            + format_metrics(full, f"{label}: full {n_images} images") + fold_note(size) + "\n" + line)
    return {"five_fold_1k": mean, "full_5k": full, "folds": folds}, text, whole


def evaluate_split(model, split_data, caption_encoder, device: torch.device, **kwargs) -> dict:
    sims, info = compute_split_scores(model, split_data, caption_encoder, device, **kwargs)
    return {"metrics": retrieval_metrics(sims), "info": info, "sims": sims}


def fold_subsets(split_data, folds: int):
    """The (image set, captions) of each of `folds` equal consecutive folds of a split."""
    from torch.utils.data import Subset
    image_set, captions = split_data
    size = len(image_set) // folds
    return [(Subset(image_set, range(fold * size, (fold + 1) * size)),
             captions[fold * size * CAPTIONS_PER_IMAGE:(fold + 1) * size * CAPTIONS_PER_IMAGE])
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


def protocol_report(sims, coco_testall: bool, label: str) -> tuple[dict, str]:
    """(metrics for the JSON report, printed table) of a score matrix under one protocol."""
    n_images, n_captions = sims.shape
    if coco_testall:
        folds = coco_five_fold(sims, COCO_FOLDS)
        full = retrieval_metrics(sims)
        text = (format_metrics(folds["mean"], f"{label}: mean of 5 folds of {folds['fold_images']} images") + "\n"
                + format_metrics(full, f"{label}: full {n_images} images") + fold_note(folds["fold_images"]))
        return {"five_fold_1k": folds["mean"], "full_5k": full, "folds": folds["folds"]}, text
    metrics = retrieval_metrics(sims)
    return metrics, format_metrics(metrics, f"{label}: {n_images} images, {n_captions} captions")
