"""Run under `torch.distributed.run` by test_distributed.py (gloo on CPU).

    train OUT ARGS...  train with train.py's options, then every rank saves its weights
    grad[:N] OUT ARGS  one DDP forward/backward on a fixed global batch of N pairs (8), split over the
                       ranks as the sampler splits a last partial batch; rank 0 saves the grads
"""

import faulthandler
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devices import distributed  # noqa: E402
from configs import train_config  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def main() -> None:
    faulthandler.dump_traceback_later(150, exit=True)  # a hung collective fails with its stack, not silently
    mode, out, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    device = torch.device("cpu")
    distributed.init_from_environment(device)
    rank = distributed.rank()
    torch.manual_seed(0)
    cfg = train_config(argv)
    trainer = Trainer(cfg, device)
    if mode == "train":
        trainer.fit()
        torch.save(trainer.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    else:
        from global_batch import global_batch
        size = int(mode.split(":")[1]) if ":" in mode else 8
        batch = global_batch(cfg, trainer.train_set, trainer.caption_encoder.pad_id, size)
        share, extra = divmod(size, distributed.world_size())
        start = rank * share + min(rank, extra)
        own = slice(start, start + share + (rank < extra))
        loss = trainer.trained(batch["images"][own], None, batch["input_ids"][own], batch["lengths"][own],
                               trainer.criterion, trainer.caption_encoder.pad_id)
        (loss * distributed.world_size()).backward()
        total = distributed.all_reduce_mean(loss.detach()) * distributed.world_size()
        if rank == 0:
            grads = {name: p.grad for name, p in trainer.model.named_parameters()}
            torch.save({"loss": total, "grads": grads}, os.path.join(out, "ddp_grads.pt"))
    distributed.cleanup()


if __name__ == "__main__":
    main()
