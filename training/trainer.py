"""The training loop shared by every system: data, model and optimiser from the config, then
epochs of optimisation steps with validation and checkpoints at their scheduled points."""

import logging
import os
import signal

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.batching import Collate, ResumableBatchSampler
from datasets.builders import build_train_dataset
from datasets.captions import caption_encoder_for, check_tokenizer, load_tokenizer, tokenizer_snapshot
from devices import distributed
from errors import ConfigError, TrainingDiverged
from modules.losses import HingeLoss, InfoNCELoss
from modules.model import build_model, pretrained_text_positions
from .optimizers import build_optimizer
from .schedule import evaluation_steps
from .state import LAST, RunState
from .speed import Throughput
from .step import OptimisationStep
from .validation import Validator

logger = logging.getLogger("dimmatch")


def ignore_interrupts(worker_id: int) -> None:
    """Data-loader workers leave Ctrl-C to the main process, which stops cleanly with a checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Trainer:
    def __init__(self, cfg, device: torch.device, init=None):
        """`init`: the loaded --init_from checkpoint (model and tokenizer), else the pretrained
        backbones of --bert_path / --clip_path."""
        self.cfg = cfg
        self.device = device
        self.world = distributed.world_size()
        self.main = distributed.is_main_process()

        text_kind = "clip" if cfg.encoders == "clip" else "bert"
        text_path = cfg.clip_path if cfg.encoders == "clip" else cfg.bert_path
        if init is None:
            tokenizer, positions = load_tokenizer(text_kind, text_path), pretrained_text_positions(cfg)
        else:
            tokenizer, positions = init.tokenizer, init.model.text_tokens()["positions"]
        self.caption_encoder = caption_encoder_for(cfg, tokenizer, positions)
        self.train_set = build_train_dataset(cfg, self.caption_encoder)
        self.sampler = ResumableBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed,
                                             distributed.rank(), self.world, drop_last=cfg.last_batch == "drop")
        steps_per_epoch = self.sampler.batches_per_epoch()
        if steps_per_epoch == 0:
            raise ConfigError(f"the training split has {len(self.train_set)} pairs, fewer than one "
                              f"batch of --batch_size {cfg.batch_size}")
        if self.sampler.last_batch_size() < self.world:
            raise ConfigError(f"the last batch of each epoch has {self.sampler.last_batch_size()} pairs, fewer than "
                              f"the {self.world} processes; use --last_batch drop or another --batch_size")
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=cfg.workers,
                                 collate_fn=Collate(self.caption_encoder.pad_id), worker_init_fn=ignore_interrupts,
                                 pin_memory=device.type == "cuda", generator=torch.Generator())
        self.eval_steps = evaluation_steps(steps_per_epoch, cfg.evals_per_epoch)
        self.validate = Validator(cfg, device, self.caption_encoder, self._scalar)

        if init is None:
            self.model = build_model(cfg).to(device)
            check_tokenizer(tokenizer, text_kind, self.model.text_tokens(), f"--{text_kind}_path {text_path}")
        else:
            self.model = init.model.to(device)
        if self.world > 1 and device.type == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.criterion = InfoNCELoss() if cfg.loss == "infonce" else HingeLoss(cfg.margin, cfg.max_violation)
        optimizer = build_optimizer(cfg, self.model.optimizer_groups(cfg))
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.state = RunState(cfg, self.model, optimizer, scaler, steps_per_epoch,
                              tokenizer_snapshot(tokenizer, text_kind))
        if cfg.resume:
            self.state.resume(cfg.resume)
        if self.world > 1:
            # CLIP's logit scale gets no gradient when it is not used by the loss (--loss hinge)
            unused = self.model.encoders.logit_scale is not None and not self.criterion.uses_logit_scale
            self.trained = DistributedDataParallel(self.model, device_ids=[device] if device.type == "cuda" else None,
                                                   find_unused_parameters=unused)
        else:
            self.trained = self.model
        self.step = OptimisationStep(cfg, self.model, self.trained, self.criterion, optimizer, scaler, device,
                                     self.caption_encoder.pad_id, steps_per_epoch, self._diverged)
        self.writer = None
        self.stop_requested = False
        self.interrupted = False
        self.speed = Throughput(cfg.batch_size)

    @property
    def optimizer(self):
        return self.state.optimizer

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed; scalars go to train.log only")
            return None
        # a resumed run replaces only what was logged after its checkpoint (steps > global_step)
        return SummaryWriter(os.path.join(self.cfg.output_dir, "tensorboard"),
                             purge_step=self.state.global_step + 1 if self.state.global_step else None)

    def _scalar(self, name: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, self.state.global_step)

    def fit(self) -> dict:
        """Train to the end, to --max_steps, or to a stop request (SIGTERM, Ctrl-C): each of them
        ends with checkpoint_last written."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        state = self.state
        self.writer = self._tensorboard() if self.main else None
        try:
            logger.info("training %d epochs x %d steps (global batch %d on %d process%s)", self.cfg.num_epochs,
                        state.steps_per_epoch, self.cfg.batch_size, self.world, "es" if self.world > 1 else "")
            while state.epoch < self.cfg.num_epochs and not self.stop_requested:
                self._run_epoch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.writer is not None:
                self.writer.close()
        return {"best_rsum": state.best_rsum, "best_at": state.best_at, "global_step": state.global_step,
                "interrupted": self.interrupted}

    def _request_stop(self, signum, frame) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        logger.warning("%s: finishing this step, writing %s and stopping (Ctrl-C again stops at once)", name, LAST)
        self.stop_requested = True
        self.interrupted = self.interrupted or signum == signal.SIGINT
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def _run_epoch(self) -> None:
        cfg, state = self.cfg, self.state
        if isinstance(self.criterion, HingeLoss):
            self.criterion.max_violation = cfg.max_violation or state.epoch >= cfg.vse_mean_warmup_epochs
        self.sampler.set_epoch(state.epoch, state.step_in_epoch)
        self.train_set.set_epoch(state.epoch)
        validate_this_epoch = (state.epoch + 1) % cfg.val_every == 0
        self.model.train()
        skipped = 0
        with tqdm(total=state.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch}",
                  disable=not self.main, dynamic_ncols=True) as bar:
            for batch in self.loader:
                skipped += batch["skipped"]
                loss = self.step(batch, state.global_step)
                batch_index = state.step_in_epoch
                state.step_in_epoch += 1
                state.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                self.speed.step()
                if state.global_step % cfg.log_every == 0:
                    self._log_progress(loss)
                stop = self._stop_now()
                if validate_this_epoch and batch_index in self.eval_steps:
                    state.save_last(self._validate_or_save() if self.main else None)
                    self.speed.restart()
                elif stop or (cfg.save_every_steps and state.global_step % cfg.save_every_steps == 0):
                    state.save_last()
                if stop:
                    self.stop_requested = True
                    logger.info("stopped after step %d; continue with --resume auto", state.global_step)
                    return
        if skipped:
            logger.warning("epoch %d: %d training pairs skipped (unreadable images, replaced by the next "
                           "readable pair)", state.epoch, skipped)
        state.epoch += 1
        state.step_in_epoch = 0
        state.save_last()

    def _log_progress(self, loss: float) -> None:
        state, cfg = self.state, self.cfg
        self._scalar("train/loss", loss)
        for group in self.optimizer.param_groups:
            self._scalar(f"lr/{group['name']}", group["lr"])
        total = state.steps_per_epoch * cfg.num_epochs
        remaining = min(total, cfg.max_steps or total) - state.global_step
        lrs = " ".join(f"{group['name']} {group['lr']:.2e}" for group in self.optimizer.param_groups)
        logger.info("epoch %d step %d/%d (global %d): loss %.4f | lr %s | %.1f pairs/s | ETA %s (training only)",
                    state.epoch, state.step_in_epoch, state.steps_per_epoch, state.global_step, loss, lrs,
                    self.speed.pairs_per_second(), self.speed.eta(remaining))

    def _validate_or_save(self) -> dict:
        """Validation metrics; if validation fails or is interrupted, the trained steps are saved first."""
        try:
            return self.validate(self.state)
        except BaseException:
            self.state.save_last()
            raise

    def _stop_now(self) -> bool:
        limit = self.cfg.max_steps and self.state.global_step >= self.cfg.max_steps
        requested = distributed.all_reduce_max(int(self.stop_requested), self.device)
        return bool(limit or requested)

    def _diverged(self, what: str) -> None:
        state = self.state
        kept = (f"{os.path.join(self.cfg.output_dir, LAST)} holds the last good state (after step "
                f"{state.last_good_step})" if state.last_good_step is not None else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{what} in epoch {state.epoch} at batch {state.step_in_epoch + 1}/"
                               f"{state.steps_per_epoch} (step {state.global_step + 1}); stopped without saving it; "
                               f"{kept}; try a lower learning rate or --amp off")
