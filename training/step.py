"""One optimisation step: schedule, forward, backward (DDP-scaled), clip, AdamW, logit-scale clamp."""

import math

import torch

from devices import autocast_context, distributed
from .schedule import lr_factor

MAX_LOGIT_SCALE = math.log(100)


class OptimisationStep:
    """Applies one batch to the model; `on_divergence(what)` is called (and must raise) when the
    loss or, without a grad scaler, the gradient norm is not finite."""

    def __init__(self, cfg, model, trained, criterion, optimizer, scaler, device, pad_id: int,
                 steps_per_epoch: int, on_divergence):
        self.cfg = cfg
        self.model = model          # the module whose parameters are optimised
        self.trained = trained      # the same, wrapped in DistributedDataParallel under torchrun
        self.criterion = criterion
        self.optimizer = optimizer
        self.scaler = scaler
        self.device = device
        self.pad_id = pad_id
        self.steps_per_epoch = steps_per_epoch
        self.world = distributed.world_size()
        self.on_divergence = on_divergence

    def __call__(self, batch: dict, global_step: int) -> float:
        """The global batch loss of this step (before the update)."""
        cfg = self.cfg
        factor = lr_factor(cfg, global_step, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        images = batch["images"].to(self.device, non_blocking=True)
        image_lengths = batch["image_lengths"]
        image_lengths = None if image_lengths is None else image_lengths.to(self.device)
        input_ids = batch["input_ids"].to(self.device, non_blocking=True)
        lengths = batch["lengths"].to(self.device)
        with autocast_context(self.device, cfg.amp):
            share = self.trained(images, image_lengths, input_ids, lengths, self.criterion, self.pad_id,
                                 cfg.global_loss_weight)
        loss = float(distributed.all_reduce_mean(share.detach().float()) * self.world)
        if not math.isfinite(loss):
            self.on_divergence(f"the loss became {loss}")
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over ranks; each rank holds one share of the global loss, so
        # scaling by the world size makes the update equal to the single-process one.
        self.scaler.scale(share * self.world).backward()
        self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            if not self.scaler.is_enabled() and not torch.isfinite(norm):
                self.on_divergence(f"the gradient norm became {float(norm)}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.model.encoders.logit_scale is not None:
            with torch.no_grad():
                self.model.encoders.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
        return loss
