"""The training loop shared by every system: data, model and optimiser from the config, then
epochs of optimisation steps with validation and checkpoints at their scheduled points."""

import datetime
import logging
import os
import signal
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from datasets.batching import Collate, ResumableBatchSampler, ignore_stop_signals
from datasets.captions import check_tokenizer, checkpoint_tokenizer, load_tokenizer, tokenizer_snapshot
from devices import distributed
from errors import ConfigError, TrainingDiverged
from modules.losses import build_loss
from outputs import manifest
from outputs.folders import PROGRAM
from pairs import build_model, pair_of, train_dataset
from provenance import data_identity
from .history import MetricsHistory
from .optimizers import build_optimizer
from .schedule import evaluation_steps
from .state import LAST, RunState
from .speed import Throughput
from .step import OptimisationStep
from .validation import Validator

logger = logging.getLogger("dimmatch")


# SIGTERM: timeout, kill, Slurm at the end of a job; SIGUSR1: Slurm's warning before pre-emption
# (sbatch --signal=USR1@90); SIGINT: Ctrl-C. Each finishes the step, writes checkpoint_last, stops.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# torchrun forwards the signal it receives to its workers, which the terminal has already sent them:
# a second Ctrl-C this soon after the first is the same request, not "stop at once"
REPEAT_WINDOW_S = 2.0


class ValidationInterrupted(BaseException):
    """A stop signal arrived during validation: the checkpoint records it as still to be done."""


def text_tower(cfg, pair, init, resume):
    """(tokenizer, backbone config, token positions) of the run: --init_from's, a resumed run's own
    (carried by its checkpoint, against which the backbone folder, if it is there, is checked), or
    the pretrained backbone's (its config is then None: its weights are loaded too)."""
    option = pair.backbone_option
    if init is not None:
        return init.tokenizer, None, init.model.text_tokens()["positions"]
    if resume is None:
        return load_tokenizer(pair.text_kind, getattr(cfg, option)), None, pair.text_positions(cfg)
    path, payload = resume
    backbone, tokens = payload.backbone_config, pair.text_tokens(payload.backbone_config)
    folder = getattr(cfg, option)
    # the run goes on with the tokenizer it carries; a backbone folder that is here must agree with it
    # (without one, our format 1, the folder's is loaded as when the run started)
    given = folder if payload.tokenizer is None or os.path.isdir(folder) else None
    tokenizer = checkpoint_tokenizer(pair.text_kind, option, payload.tokenizer, tokens, f"checkpoint {path}",
                                     given=given, need_config=True, keep_own=True)
    return tokenizer, backbone, tokens["positions"]


def check_same_run_data(resume, data: dict) -> None:
    """A resumed run trains and validates on the data it started with."""
    path, payload = resume
    saved = payload.data
    if saved is None:           # checkpoints written before data identities were recorded
        return
    for part, label in (("train", "training"), ("validation", "validation")):
        if saved[part] != data[part]:
            changed = [key for key in sorted(set(saved[part]) | set(data[part]))
                       if saved[part].get(key) != data[part].get(key)]
            raise ConfigError(f"--resume {path}: the {label} data differ from the run's ({', '.join(changed)}); "
                              "give the data it was started with")


class Trainer:
    def __init__(self, cfg, device: torch.device, init=None, resume: str | None = None):
        """`init`: the loaded --init_from checkpoint (model and tokenizer), else the pretrained
        backbone of the encoder pair (--bert_path / --clip_path); `resume`: the checkpoint a
        resumed run continues from."""
        self.cfg = cfg
        self.device = device
        self.world = distributed.world_size()
        self.main = distributed.is_main_process()

        pair = pair_of(cfg)
        tokenizer, backbone, positions = text_tower(cfg, pair, init, resume)
        self.caption_encoder = pair.caption_encoder(cfg, tokenizer, positions)
        steps_per_epoch, data = self._data(resume)
        self.model = self._model(pair, init, backbone, tokenizer)
        self.criterion = build_loss(cfg)
        optimizer = build_optimizer(cfg, self.model.optimizer_groups(cfg, getattr(cfg, pair.head_lr_option)))
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.state = RunState(cfg, self.model, optimizer, scaler, steps_per_epoch,
                              tokenizer_snapshot(tokenizer, pair.text_kind), data)
        if resume:
            self.state.resume(resume)
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
        self.stop_signal = None          # the first stop signal received (by any rank)
        self.stop_time = 0.0
        self.halted = False              # stopped before the end: a signal or --max_steps
        self.validating = False
        self.history = MetricsHistory(cfg.output_dir)
        self.speed = Throughput(cfg.batch_size)

    def _data(self, resume) -> tuple[int, dict]:
        """The training pairs, their loader and the validation split: (steps per epoch, the data's
        identities, which a resumed run must find again)."""
        cfg = self.cfg
        self.train_set = train_dataset(cfg, self.caption_encoder)
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
                                 collate_fn=Collate(self.caption_encoder.pad_id), worker_init_fn=ignore_stop_signals,
                                 pin_memory=self.device.type == "cuda", generator=torch.Generator())
        self.eval_steps = evaluation_steps(steps_per_epoch, cfg.evals_per_epoch)
        self.validate = Validator(cfg, self.device, self.caption_encoder, self._scalar)
        validation = self.validate.data
        data = {"train": self.train_set.identity(),
                "validation": data_identity(validation.images, validation.captions, cfg.val_split)}
        if resume:
            check_same_run_data(resume, data)
        return steps_per_epoch, data

    def _model(self, pair, init, backbone, tokenizer):
        """--init_from's model, or one built for the run (pretrained backbone weights, or a resumed
        run's architecture, whose weights its checkpoint brings), on the device."""
        cfg, option = self.cfg, pair.backbone_option
        if init is not None:
            model = init.model.to(self.device)
        else:
            model = build_model(cfg, backbone_config=backbone).to(self.device)
            if backbone is None:
                check_tokenizer(tokenizer, pair.text_kind, model.text_tokens(), f"--{option} {getattr(cfg, option)}")
        if cfg.global_loss_weight and model.head.exact_global:
            raise ConfigError(f"--global_loss_weight {cfg.global_loss_weight}: the {cfg.sim_head} head's score is an "
                              "inner product already, which two-stage retrieval searches exactly; the pooled "
                              "vectors that loss trains would never be used (it serves X-Dim and ESL-region)")
        if self.world > 1 and self.device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    @property
    def optimizer(self):
        return self.state.optimizer

    def _tensorboard(self):
        # an optional dependency, slow to import: only the main process writes scalars
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            logger.warning("tensorboard is not installed; scalars go to train.log only")
            return None
        folder = os.path.join(self.cfg.output_dir, "tensorboard")
        before = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        # a resumed run replaces only what was logged after its checkpoint (steps > global_step)
        writer = SummaryWriter(folder, purge_step=self.state.global_step + 1 if self.state.global_step else None)
        # the event file the writer just opened is the run's: --overwrite may set it aside, never another's
        manifest.claim(self.cfg.output_dir, PROGRAM,
                       [os.path.join("tensorboard", name) for name in set(os.listdir(folder)) - before])
        return writer

    def _scalar(self, name: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, self.state.global_step)

    def fit(self) -> dict:
        """Train to the end, to --max_steps, or to a stop signal: each of them ends with
        checkpoint_last written. A validation a signal interrupted is done first on resume."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in STOP_SIGNALS}
        state = self.state
        if self.main:
            self.history.cut_after(state.global_step)
            self.writer = self._tensorboard()
        try:
            logger.info("training %d epochs x %d steps (global batch %d on %d process%s)", self.cfg.num_epochs,
                        state.steps_per_epoch, self.cfg.batch_size, self.world, "es" if self.world > 1 else "")
            if state.validation_pending:
                logger.info("doing the validation of step %d first: a signal interrupted it", state.global_step)
                self._checkpoint(self._validate_or_save() if self.main else None)
            if self.cfg.max_steps and state.global_step >= self.cfg.max_steps:
                logger.info("already at --max_steps %d; give a larger one (0: none) to go on", self.cfg.max_steps)
                self.halted = True
            while state.epoch < self.cfg.num_epochs and not self.halted:
                self._run_epoch()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.writer is not None:
                self.writer.close()
        return {"best_rsum": state.best_rsum, "best_at": state.best_at, "global_step": state.global_step,
                "stopped_by": self.stop_signal if self.halted else None}

    def _request_stop(self, signum, frame) -> None:
        now = time.monotonic()
        if self.stop_signal is None:
            self.stop_signal, self.stop_time = signum, now
            logger.warning("%s: finishing this step, writing %s and stopping (Ctrl-C again stops at once)",
                           signal.Signals(signum).name, LAST)
        elif signum == signal.SIGINT and now - self.stop_time > REPEAT_WINDOW_S:
            raise KeyboardInterrupt("stopped at once, without a checkpoint of the steps since the last one")
        if self.validating:
            self.validating = False      # raised once: a repeated signal must not break the saving
            raise ValidationInterrupted()

    def _run_epoch(self) -> None:
        cfg, state = self.cfg, self.state
        self.criterion.start_epoch(state.epoch)
        self.sampler.set_epoch(state.epoch, state.step_in_epoch)
        self.train_set.set_epoch(state.epoch)
        validate_this_epoch = (state.epoch + 1) % cfg.val_every == 0
        self.model.train()
        with tqdm(total=state.steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {state.epoch}",
                  disable=not self.main, dynamic_ncols=True) as bar:
            for batch in self.loader:
                state.skipped_in_epoch += batch["skipped"]
                loss = self.step(batch, state.global_step)
                batch_index = state.step_in_epoch
                state.step_in_epoch += 1
                state.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                self.speed.step()
                if state.global_step % cfg.log_every == 0:
                    self._log_progress(loss)
                if validate_this_epoch and batch_index in self.eval_steps:
                    self._checkpoint(self._validate_or_save() if self.main else None)
                    self.speed.restart()
                else:
                    self._checkpoint(None, saved=bool(cfg.save_every_steps)
                                     and state.global_step % cfg.save_every_steps == 0)
                if self.halted:
                    return
        if state.skipped_in_epoch:
            logger.warning("epoch %d: %d training pairs skipped (unreadable images, replaced by the next "
                           "readable pair)", state.epoch, state.skipped_in_epoch)
        state.epoch += 1
        state.step_in_epoch = 0
        state.skipped_in_epoch = 0
        state.save_last()

    def _checkpoint(self, metrics: dict | None, saved: bool = True) -> None:
        """After a step (or a validation, on rank 0): every rank learns whether to stop (a signal to
        any of them, or --max_steps), and checkpoint_last is written when due or when stopping."""
        limit = bool(self.cfg.max_steps) and self.state.global_step >= self.cfg.max_steps
        signum = distributed.all_reduce_max(self.stop_signal or 0, self.device)
        self.stop_signal = signum or None
        if saved or limit or signum:
            self.state.save_last(metrics)
        if limit or signum:
            self.halted = True
            # a run stopped by --max_steps keeps that limit when resumed: the hint must raise it
            hint = "--resume auto" if signum else "--resume auto --max_steps N (a larger N, or 0 for no limit)"
            logger.info("stopped after step %d; continue with %s", self.state.global_step, hint)

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

    def _validate_or_save(self) -> dict | None:
        """Validation metrics, or None when a stop signal interrupted it (the checkpoint then marks
        it pending). If validation fails, the trained steps are saved first."""
        state = self.state
        state.validation_pending = True
        started = time.monotonic()
        self.validating = True
        try:
            metrics = self.validate(state)
        except ValidationInterrupted:
            logger.warning("validation interrupted; it is done first when the run is resumed")
            return None
        except BaseException:
            self.validating = False
            state.save_last()
            raise
        finally:
            self.validating = False
        state.validation_pending = False
        self.history.append(self._history_entry(metrics, time.monotonic() - started))
        return metrics

    def _history_entry(self, metrics: dict, seconds: float) -> dict:
        state = self.state
        entry = {"global_step": state.global_step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                 "split": self.cfg.val_split, "protocol": self.cfg.val_protocol, "i2t": metrics["i2t"],
                 "t2i": metrics["t2i"], "rsum": metrics["rsum"], "seconds": round(seconds, 3),
                 "best": state.best_at is not None and state.best_at["global_step"] == state.global_step,
                 "lr": {group["name"]: group["lr"] for group in self.optimizer.param_groups},
                 "time": datetime.datetime.now().isoformat(timespec="seconds")}
        if "folds" in metrics:
            entry["folds_rsum"] = [fold["rsum"] for fold in metrics["folds"]]
        return entry

    def _diverged(self, what: str) -> None:
        state = self.state
        kept = (f"{os.path.join(self.cfg.output_dir, LAST)} holds the last good state (after step "
                f"{state.last_good_step})" if state.last_good_step is not None else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{what} in epoch {state.epoch} at batch {state.step_in_epoch + 1}/"
                               f"{state.steps_per_epoch} (step {state.global_step + 1}); stopped without saving it; "
                               f"{kept}; try a lower learning rate or --amp off")
