"""Evaluation protocols: one split (Flickr30K 1K, validation) and COCO testall (5-fold 1K + 5K)."""

import logging
import time

import torch
from torch.utils.data import DataLoader

from datasets.batching import Collate
from datasets.builders import build_eval_sets
from datasets.captions import caption_encoder_for
from .metrics import coco_five_fold, retrieval_metrics
from .scoring import encode_items, score_all

logger = logging.getLogger("dimmatch")


def _loader(dataset, batch_size: int, workers: int, pad_id: int) -> DataLoader:
    # a private generator keeps evaluation from drawing on the global RNG (exact resume)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=Collate(pad_id), generator=torch.Generator())


def compute_split_scores(model, cfg, split: str, device: torch.device, *, amp: str = "off",
                         batch_size: int = 128, workers: int = 2, mem_gb: float | None = None,
                         max_images: int | None = None, progress: bool = True, caption_encoder=None):
    """Score matrix (images x captions) of a split; every image and caption is encoded once."""
    caption_encoder = caption_encoder or caption_encoder_for(cfg)
    image_set, caption_set = build_eval_sets(cfg, split, caption_encoder, max_images)
    was_training = model.training
    model.eval()
    started = time.time()
    images = encode_items(model, _loader(image_set, batch_size, workers, caption_encoder.pad_id),
                          "images", device, amp, progress)
    captions = encode_items(model, _loader(caption_set, batch_size, workers, caption_encoder.pad_id),
                            "captions", device, amp, progress)
    encoded = time.time()
    sims = score_all(model.head, images, captions, device, mem_gb, amp, progress)
    model.train(was_training)
    info = {"images_encoded": len(images), "captions_encoded": len(captions),
            "encode_seconds": encoded - started, "score_seconds": time.time() - encoded}
    logger.info("split %s: encoded %d images and %d captions once each (%.1fs), scored %dx%d in %.1fs",
                split, len(images), len(captions), info["encode_seconds"], len(images), len(captions),
                info["score_seconds"])
    return sims, info


def evaluate_split(model, cfg, split: str, device: torch.device, **kwargs) -> dict:
    sims, info = compute_split_scores(model, cfg, split, device, **kwargs)
    return {"metrics": retrieval_metrics(sims), "info": info, "sims": sims}


def evaluate_testall(model, cfg, split: str, device: torch.device, **kwargs) -> dict:
    """COCO: the full 5K matrix once; 1K = mean of its 5 diagonal 1,000-image folds."""
    sims, info = compute_split_scores(model, cfg, split, device, **kwargs)
    return {"five_fold_1k": coco_five_fold(sims), "full_5k": retrieval_metrics(sims), "info": info, "sims": sims}
