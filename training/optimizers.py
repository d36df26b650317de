"""The two AdamW variants of the released recipes.

The region systems use torch.optim.AdamW: decay first, p <- p (1 - lr wd), then the Adam step
with bias-corrected moments, p <- p - lr m_hat / (sqrt(v_hat) + eps).
The ESL-CLIP code uses the AdamW of the original BERT / transformers releases, which differs in
two places: eps is added to sqrt(v) before the bias correction (the step is
lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps), so eps acts as eps / sqrt(1 - b2^t)), and the
decay comes after the step, on the updated weights. For gradients near eps these give visibly
different steps, so ESL-CLIP training uses `BertAdamW` to equal the released recipe.
"""

import math

import torch


class BertAdamW(torch.optim.Optimizer):
    """AdamW as in the original BERT release (bias correction folded into the step size, eps
    outside it, decoupled weight decay applied after the update)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                first, second = state["exp_avg"], state["exp_avg_sq"]
                first.mul_(beta1).add_(param.grad, alpha=1 - beta1)
                second.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                step_size = group["lr"] * math.sqrt(1 - beta2 ** state["step"]) / (1 - beta1 ** state["step"])
                param.addcdiv_(first, second.sqrt().add_(group["eps"]), value=-step_size)
                if group["weight_decay"] > 0:
                    param.mul_(1 - group["lr"] * group["weight_decay"])
        return None


OPTIMIZERS = {"adamw": torch.optim.AdamW, "bert_adamw": BertAdamW}


def build_optimizer(cfg, groups: list[dict]) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](groups, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
