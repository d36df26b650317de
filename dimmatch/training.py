"""The training loop shared by every system: optimiser groups and schedules from the released
recipes, validation and best-model selection, atomic checkpoints with exact resume, DDP."""

import logging
import math
import os
import random
import signal

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import checkpoint, distributed
from .config import Config
from .datasets.batching import Collate, ResumableBatchSampler
from .datasets.builders import VALIDATION_MAX_IMAGES, build_train_dataset
from .datasets.captions import caption_encoder_for
from .errors import ConfigError, TrainingDiverged
from .evaluation.metrics import format_metrics
from .evaluation.protocol import evaluate_split
from .evaluation.scoring import autocast_context
from .modules.losses import HingeLoss, InfoNCELoss
from .modules.model import backbone_config_of, build_model
from .utils import write_json

logger = logging.getLogger("dimmatch")

LAST = "checkpoint_last.pth"
BEST = "model_best.pth"
MAX_LOGIT_SCALE = math.log(100)


def lr_factor(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier of optimiser step `step` (0-based), a pure function of the step
    so that a resumed run continues the schedule exactly.

    step: x0.1 from epoch `lr_update` on (released region recipe);
    cosine: linear warm-up over `warmup_proportion` of all steps, then half a cosine to 0
    (released ESL-CLIP recipe, transformers' get_cosine_schedule_with_warmup)."""
    if cfg.schedule == "step":
        return 0.1 if step // steps_per_epoch >= cfg.lr_update else 1.0
    total = steps_per_epoch * cfg.num_epochs
    warmup = int(cfg.warmup_proportion * total)
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def evaluation_steps(steps_per_epoch: int, evals_per_epoch: int) -> set[int]:
    """Batch indices after which to validate: evenly spread, the last one ending the epoch."""
    return set(np.linspace(0, steps_per_epoch - 1, evals_per_epoch + 1, dtype=int)[1:].tolist())


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    def __init__(self, cfg: Config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.world = distributed.world_size()
        self.main = distributed.is_main_process()
        self.output_dir = cfg.output_dir

        self.caption_encoder = caption_encoder_for(cfg)
        self.train_set = build_train_dataset(cfg, self.caption_encoder)
        self.sampler = ResumableBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed,
                                             distributed.rank(), self.world)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        if self.steps_per_epoch == 0:
            raise ConfigError(f"the training split has {len(self.train_set)} pairs, fewer than one "
                              f"batch of --batch_size {cfg.batch_size}")
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.workers,
                                 collate_fn=Collate(self.caption_encoder.pad_id),
                                 pin_memory=device.type == "cuda", generator=torch.Generator())
        self.eval_steps = evaluation_steps(self.steps_per_epoch, cfg.evals_per_epoch)

        self.model = build_model(cfg).to(device)
        if self.world > 1 and device.type == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.criterion = InfoNCELoss() if cfg.loss == "infonce" else HingeLoss(cfg.margin, cfg.max_violation)
        self.optimizer = torch.optim.AdamW(self.model.optimizer_groups(cfg), weight_decay=cfg.weight_decay,
                                           eps=cfg.adam_eps)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_rsum = -math.inf
        self.best_at = None
        self.last_good_step = None
        if cfg.resume:
            self._resume(cfg.resume)
        if self.world > 1:
            # CLIP's logit scale gets no gradient when it is not used by the loss (--loss hinge)
            unused = self.model.encoders.logit_scale is not None and not self.criterion.uses_logit_scale
            self.trained = DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None,
                                                   find_unused_parameters=unused)
        else:
            self.trained = self.model
        self.writer = self._tensorboard() if self.main else None
        self.stop_requested = False

    # ------------------------------------------------------------------ state
    def _payload(self, full: bool, metrics: dict | None = None) -> dict:
        payload = {
            "config": self.cfg.to_dict(),
            "backbone_config": backbone_config_of(self.model),
            "model": self.model.state_dict(),
            "progress": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "global_step": self.global_step, "steps_per_epoch": self.steps_per_epoch,
                         "best_rsum": self.best_rsum, "best_at": self.best_at},
            "metrics": metrics,
        }
        if full:
            payload.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                           rng=_rng_state())
        return payload

    def _save_last(self, metrics: dict | None = None) -> None:
        if self.main:
            checkpoint.save(os.path.join(self.output_dir, LAST), self._payload(full=True, metrics=metrics))
        self.last_good_step = self.global_step
        distributed.barrier()

    def _resume(self, path: str) -> None:
        if path == "auto":
            path = os.path.join(self.output_dir, LAST)
            if not os.path.isfile(path):
                logger.info("--resume auto: no %s yet, starting from scratch", path)
                return
        payload = checkpoint.load_native(path)
        checkpoint.check_same_model(path, payload["config"], self.cfg)
        progress = payload["progress"]
        if "optimizer" not in payload:
            raise ConfigError(f"{path} holds weights only (a model_best file); resume from {LAST}")
        if progress["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(
                f"{path} was trained with {progress['steps_per_epoch']} steps per epoch, this run has "
                f"{self.steps_per_epoch}: resuming exactly needs the same data and --batch_size")
        checkpoint.load_weights(self.model, payload["model"], path)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scaler.load_state_dict(payload["scaler"])
        _set_rng_state(payload["rng"])
        self.epoch, self.step_in_epoch = progress["epoch"], progress["step_in_epoch"]
        self.global_step = progress["global_step"]
        self.best_rsum, self.best_at = progress["best_rsum"], progress["best_at"]
        self.last_good_step = self.global_step
        logger.info("resumed from %s at epoch %d, step %d of %d (global step %d, best rSum %.1f)", path,
                    self.epoch, self.step_in_epoch, self.steps_per_epoch, self.global_step, self.best_rsum)

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed; scalars go to train.log only")
            return None
        return SummaryWriter(os.path.join(self.output_dir, "tensorboard"), purge_step=self.global_step or None)

    def _scalar(self, name: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, self.global_step)

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict:
        previous = signal.signal(signal.SIGTERM, self._request_stop)
        try:
            logger.info("training %d epochs x %d steps (global batch %d on %d process%s)", self.cfg.num_epochs,
                        self.steps_per_epoch, self.cfg.batch_size, self.world, "es" if self.world > 1 else "")
            while self.epoch < self.cfg.num_epochs and not self.stop_requested:
                self._run_epoch()
        finally:
            signal.signal(signal.SIGTERM, previous)
            if self.writer is not None:
                self.writer.close()
        return {"best_rsum": self.best_rsum, "best_at": self.best_at, "global_step": self.global_step}

    def _request_stop(self, signum, frame) -> None:
        logger.warning("SIGTERM: finishing this step, writing %s and stopping", LAST)
        self.stop_requested = True

    def _run_epoch(self) -> None:
        cfg = self.cfg
        if isinstance(self.criterion, HingeLoss):
            self.criterion.max_violation = cfg.max_violation or self.epoch >= cfg.vse_mean_warmup_epochs
        self.sampler.set_epoch(self.epoch, self.step_in_epoch)
        self.train_set.set_epoch(self.epoch)
        validate_this_epoch = (self.epoch + 1) % cfg.val_every == 0
        self.model.train()
        skipped = 0
        with tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, desc=f"epoch {self.epoch}",
                  disable=not self.main, dynamic_ncols=True) as bar:
            for batch in self.loader:
                skipped += batch["skipped"]
                loss = self._train_step(batch)
                batch_index = self.step_in_epoch
                self.step_in_epoch += 1
                self.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                if self.global_step % cfg.log_every == 0:
                    self._scalar("train/loss", loss)
                    for group in self.optimizer.param_groups:
                        self._scalar(f"lr/{group['name']}", group["lr"])
                stop = self._stop_now()
                if validate_this_epoch and batch_index in self.eval_steps:
                    self._validate()
                elif stop or (cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0):
                    self._save_last()
                if stop:
                    self.stop_requested = True
                    logger.info("stopped after step %d; continue with --resume auto", self.global_step)
                    return
        if skipped:
            logger.warning("epoch %d: %d training pairs skipped (unreadable images, replaced by the next "
                           "readable pair)", self.epoch, skipped)
        self.epoch += 1
        self.step_in_epoch = 0
        self._save_last()

    def _stop_now(self) -> bool:
        limit = self.cfg.max_steps and self.global_step >= self.cfg.max_steps
        requested = distributed.all_reduce_max(int(self.stop_requested), self.device)
        return bool(limit or requested)

    def _train_step(self, batch: dict) -> float:
        cfg = self.cfg
        factor = lr_factor(cfg, self.global_step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        images = batch["images"].to(self.device, non_blocking=True)
        image_lengths = batch["image_lengths"]
        image_lengths = None if image_lengths is None else image_lengths.to(self.device)
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        lengths = batch["lengths"].to(self.device)
        with autocast_context(self.device, cfg.amp):
            share = self.trained(images, image_lengths, input_ids, lengths, self.criterion,
                                 self.caption_encoder.pad_id)
        loss = float(distributed.all_reduce_mean(share.detach().float()) * self.world)
        if not math.isfinite(loss):
            self._diverged(f"the loss became {loss}")
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; each rank holds one share of the global loss, so
        # scaling by the world size makes the update equal to the single-process one.
        self.scaler.scale(share * self.world).backward()
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                self._diverged(f"the gradient norm became {float(norm)}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.model.encoders.logit_scale is not None:
            with torch.no_grad():
                self.model.encoders.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
        return loss

    def _diverged(self, what: str) -> None:
        kept = (f"{os.path.join(self.output_dir, LAST)} holds the last good state (after step {self.last_good_step})"
                if self.last_good_step is not None else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{what} in epoch {self.epoch} at batch {self.step_in_epoch + 1}/"
                               f"{self.steps_per_epoch} (step {self.global_step + 1}); stopped without saving it; "
                               f"{kept}; try a lower learning rate or --amp off")

    def _validate(self) -> None:
        cfg = self.cfg
        metrics = None
        if self.main:
            result = evaluate_split(self.model, cfg, cfg.val_split, self.device, amp=cfg.amp,
                                    batch_size=cfg.eval_batch_size, workers=cfg.workers, mem_gb=cfg.eval_mem_gb,
                                    max_images=VALIDATION_MAX_IMAGES, progress=True,
                                    caption_encoder=self.caption_encoder)
            metrics = result["metrics"]
            logger.info(format_metrics(metrics, f"validation ({cfg.val_split}) epoch {self.epoch} "
                                                f"step {self.step_in_epoch}/{self.steps_per_epoch}"))
            for direction in ("i2t", "t2i"):
                for key in ("r1", "r5", "r10"):
                    self._scalar(f"val/{direction}_{key}", metrics[direction][key])
            self._scalar("val/rsum", metrics["rsum"])
            if metrics["rsum"] > self.best_rsum:
                self.best_rsum = metrics["rsum"]
                self.best_at = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                                "global_step": self.global_step}
                checkpoint.save(os.path.join(self.output_dir, BEST), self._payload(full=False, metrics=metrics))
                write_json({"metrics": metrics, **self.best_at}, os.path.join(self.output_dir, "best_metrics.json"))
                logger.info("new best rSum %.1f -> %s", self.best_rsum, os.path.join(self.output_dir, BEST))
        self._save_last(metrics)
