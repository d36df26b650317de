"""Validation during training and the choice of the best model (by rSum, never on test)."""

import logging
import os

from checkpoints.atomic import write_json
from pairs import load_eval_split
from evaluation.metrics import DIRECTIONS, RECALL_KEYS, format_metrics
from evaluation.protocol import COCO_FOLDS, VALIDATION_MAX_IMAGES, validation_metrics

logger = logging.getLogger("dimmatch")


class Validator:
    """Scores the validation split (rank 0 only), logs it, and keeps `model_best` up to date."""

    def __init__(self, cfg, device, caption_encoder, scalar):
        self.cfg = cfg
        self.device = device
        self.caption_encoder = caption_encoder
        self.scalar = scalar  # (name, value) -> TensorBoard at the current step
        # read and checked when training starts, so that no epoch is lost to a bad validation file
        if cfg.val_protocol == "first_1k":
            self.data = load_eval_split(cfg, cfg.val_split, VALIDATION_MAX_IMAGES)
        else:
            self.data = load_eval_split(cfg, cfg.val_split, folds=COCO_FOLDS)

    def __call__(self, state) -> dict:
        cfg = self.cfg
        metrics = validation_metrics(state.model, self.data, cfg.val_protocol, self.caption_encoder, self.device,
                                     amp=cfg.amp, batch_size=cfg.eval_batch_size, workers=cfg.workers,
                                     mem_gb=cfg.eval_mem_gb, progress=True)
        title = f"validation ({cfg.val_split}, {cfg.val_protocol}) epoch {state.epoch} " \
                f"step {state.step_in_epoch}/{state.steps_per_epoch}"
        for number, fold in enumerate(metrics.get("folds", []), start=1):
            logger.info(format_metrics(fold, f"{title}: fold {number} of {len(metrics['folds'])}"))
        selected = {"first_1k": title, "last_fold": f"{title}: the last fold, which selects the model",
                    "mean_5fold": f"{title}: the mean of the folds, which selects the model"}[cfg.val_protocol]
        logger.info(format_metrics(metrics, selected))
        for direction in DIRECTIONS:
            for key in RECALL_KEYS:
                self.scalar(f"val/{direction}_{key}", metrics[direction][key])
        self.scalar("val/rsum", metrics["rsum"])
        self.keep_if_best(state, metrics)
        return metrics

    def keep_if_best(self, state, metrics: dict) -> None:
        if metrics["rsum"] <= state.best_rsum:
            return
        state.best_rsum = metrics["rsum"]
        state.best_at = {"epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                         "global_step": state.global_step}
        path = state.save_best(metrics)
        write_json({"metrics": metrics, **state.best_at}, os.path.join(self.cfg.output_dir, "best_metrics.json"))
        logger.info("new best rSum %.1f -> %s", state.best_rsum, path)
