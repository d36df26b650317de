"""A run's progress and the checkpoints that record it: what they hold, and exact resume."""

import logging
import math
import os

from checkpoints import hub, native as checkpoint
from checkpoints.card import model_card
from checkpoints.payload import Payload
from devices import distributed
from errors import CheckpointError, ConfigError
from .rng import capture_rng_state, restore_rng_state

logger = logging.getLogger("dimmatch")

LAST = "checkpoint_last.pth"
BEST = "model_best"             # a model folder (checkpoints.hub): config.json, model.safetensors, tokenizer, card


class RunState:
    """Counters of the run (epoch, step, best validation) plus the model, optimiser and scaler
    whose states `checkpoint_last` carries. `model_best` (a model folder) holds weights, progress and
    metrics only."""

    def __init__(self, cfg, model, optimizer, scaler, steps_per_epoch: int, tokenizer: dict, data: dict):
        self.cfg = cfg
        self.tokenizer = tokenizer  # its files, so that a checkpoint evaluates anywhere, offline
        self.data = data            # identities of the training and validation data (a resume is checked)
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.steps_per_epoch = steps_per_epoch
        self.output_dir = cfg.output_dir
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.best_rsum = -math.inf
        self.best_at = None
        self.skipped_in_epoch = 0          # unreadable training images replaced so far this epoch
        self.validation_pending = False    # a signal interrupted the validation of this step
        self.last_good_step = None
        self.on_first_save = None          # called once, after the first checkpoint_last of this run

    def progress(self) -> dict:
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
                "steps_per_epoch": self.steps_per_epoch, "best_rsum": self.best_rsum, "best_at": self.best_at,
                "skipped_in_epoch": self.skipped_in_epoch, "validation_pending": self.validation_pending}

    def payload(self, full: bool, metrics: dict | None = None, rng: list | None = None) -> Payload:
        payload = Payload.of_model(self.cfg, self.model, self.tokenizer, self.progress(), metrics, self.data)
        if full:
            # every rank's generators: dropout draws differ per rank, and each must go on with its own
            payload = payload.with_training_state(self.optimizer.state_dict(), self.scaler.state_dict(), rng)
        return payload

    def save_last(self, metrics: dict | None = None) -> None:
        """checkpoint_last (rank 0 writes, every rank waits), the state a resume starts from."""
        rng = distributed.gather_objects(capture_rng_state())
        if distributed.is_main_process():
            self.payload(full=True, metrics=metrics, rng=rng).save(os.path.join(self.output_dir, LAST))
            if self.on_first_save is not None:
                done, self.on_first_save = self.on_first_save, None
                done()
        self.last_good_step = self.global_step
        distributed.barrier()

    def save_best(self, metrics: dict) -> str:
        path = os.path.join(self.output_dir, BEST)
        payload = self.payload(full=False, metrics=metrics)
        try:
            hub.save_folder(path, payload, card=model_card(payload, self.cfg, path))
        except OSError as exc:
            raise CheckpointError(f"cannot write {path} ({exc.strerror or exc}); the previous one, if any, is "
                                  "intact") from exc
        return path

    def resume(self, resume: tuple) -> None:
        """Continue exactly where the checkpoint (path, Payload) stopped."""
        path, payload = resume
        progress = payload.progress
        if progress["steps_per_epoch"] != self.steps_per_epoch:
            raise ConfigError(
                f"{path} was trained with {progress['steps_per_epoch']} steps per epoch, this run has "
                f"{self.steps_per_epoch}: resuming exactly needs the same data and --batch_size")
        checkpoint.load_weights(self.model, payload.model, path)
        self.optimizer.load_state_dict(payload.optimizer)
        self.scaler.load_state_dict(payload.scaler)
        ranks = payload.rng_ranks or [payload.rng]
        if len(ranks) != distributed.world_size():
            logger.warning("%s was written by %d process(es), this run has %d: it goes on from the same step, but "
                           "the random draws of dropout differ from an uninterrupted run", path, len(ranks),
                           distributed.world_size())
        restore_rng_state(ranks[distributed.rank() % len(ranks)])
        self.epoch, self.step_in_epoch = progress["epoch"], progress["step_in_epoch"]
        self.global_step = progress["global_step"]
        self.best_rsum, self.best_at = progress["best_rsum"], progress["best_at"]
        self.skipped_in_epoch = progress.get("skipped_in_epoch", 0)
        self.validation_pending = progress.get("validation_pending", False)
        self.last_good_step = self.global_step
        logger.info("resumed from %s at epoch %d, step %d of %d (global step %d, best rSum %.1f)", path,
                    self.epoch, self.step_in_epoch, self.steps_per_epoch, self.global_step, self.best_rsum)
