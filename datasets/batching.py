"""Batches: padding collate, a resumable (and distributed) batch sampler, caption sets."""

import signal

import torch
from torch.utils.data import Dataset, Sampler


def ignore_stop_signals(worker_id: int) -> None:
    """Data-loader workers leave the stop signals (SIGINT, SIGTERM, SIGUSR1; a scheduler sends them to
    the whole process group) to the main process, which stops cleanly with a checkpoint and then
    shuts the workers down."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)


class CaptionSet(Dataset):
    """Each caption once, tokenised without augmentation (evaluation)."""

    def __init__(self, captions: list[str], caption_encoder):
        self.captions = captions
        self.caption_encoder = caption_encoder

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict:
        return {"ids": self.caption_encoder(self.captions[index]), "index": index}


class Collate:
    """Pads region sets (zeros) and token ids (`pad_id`) to the longest in the batch, and sums
    the items' `skipped` counts (training pairs whose unreadable image was replaced)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        batch = {"skipped": sum(item.get("skipped", 0) for item in items),
                 "index": torch.tensor([item["index"] for item in items])}
        if "image" in items[0]:
            images = [item["image"] for item in items]
            if images[0].dim() == 2:
                lengths = torch.tensor([image.shape[0] for image in images])
                padded = images[0].new_zeros(len(images), int(lengths.max()), images[0].shape[1])
                for row, image in enumerate(images):
                    padded[row, : image.shape[0]] = image
                batch["images"], batch["image_lengths"] = padded, lengths
            else:
                batch["images"], batch["image_lengths"] = torch.stack(images), None
        if "ids" in items[0]:
            lengths = torch.tensor([len(item["ids"]) for item in items])
            ids = torch.full((len(items), int(lengths.max())), self.pad_id, dtype=torch.long)
            for row, item in enumerate(items):
                ids[row, : len(item["ids"])] = torch.tensor(item["ids"], dtype=torch.long)
            batch["input_ids"], batch["lengths"] = ids, lengths
        return batch


class ResumableBatchSampler(Sampler):
    """Shuffled batches whose order is a function of (seed, epoch) alone.

    Under DDP each rank takes its slot of every global batch of the same permutation, so the
    ranks' batches together form the single-process global batch. `start_batch` skips the
    batches a resumed run already trained on. `drop_last` drops the incomplete last batch (the
    released region loaders); otherwise it is trained too (the released ESL-CLIP loader), split
    over the ranks as evenly as possible.
    """

    def __init__(self, num_items: int, global_batch: int, seed: int, rank: int = 0, world: int = 1,
                 drop_last: bool = True):
        if global_batch % world:
            raise ValueError("global batch must be divisible by the number of processes")
        self.num_items = num_items
        self.global_batch = global_batch
        self.seed = seed
        self.rank = rank
        self.world = world
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_items, self.global_batch)
        return full + (0 if self.drop_last or not rest else 1)

    def last_batch_size(self) -> int:
        """Pairs in the epoch's last global batch."""
        return min(self.global_batch, self.num_items - (self.batches_per_epoch() - 1) * self.global_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_items, generator=generator).tolist()
        for batch in range(self.start_batch, self.batches_per_epoch()):
            items = order[batch * self.global_batch: (batch + 1) * self.global_batch]
            share, extra = divmod(len(items), self.world)
            start = self.rank * share + min(self.rank, extra)
            yield items[start: start + share + (self.rank < extra)]
