"""Every head trains: a few optimiser steps on a fixed batch lower the loss; the CPU device keeps
freed memory for the next step."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from conftest import REGION_DIM, ROOT, make_config
from datasets.transforms import ClipPreprocess
from datasets.batching import Collate
from datasets.captions import load_tokenizer
from datasets.karpathy import KarpathyTrainDataset, load_karpathy_split
from datasets.precomp import PrecompSplit, PrecompTrainDataset
from modules.losses import HingeLoss, InfoNCELoss
from pairs import build_model, pair_of


def region_config(tiny_bert, head, embed_size):
    return make_config(encoders="region_bert", sim_head=head, embed_size=embed_size, img_dim=REGION_DIM, kernel_size=2,
                  esl_levels=4 if head.startswith("esl") else None, cosine_pool="mean", bert_path=tiny_bert,
                  learning_rate=1e-3, word_aug=0.0)


def train_steps(model, batch, criterion, steps=12, lr=1e-3):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(batch["images"], batch["image_lengths"], batch["input_ids"], batch["lengths"], criterion)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("head,embed_size", [("xdim", 32), ("esl_h", 32), ("esl_a", 32), ("cosine", 32)])
def test_region_heads_reduce_the_loss(region_data, tiny_bert, head, embed_size):
    torch.manual_seed(0)
    cfg = region_config(tiny_bert, head, embed_size)
    encoder = pair_of(cfg).caption_encoder(cfg, load_tokenizer("bert", tiny_bert), 128)
    dataset = PrecompTrainDataset(PrecompSplit(region_data[0], "f30k_precomp", "train", REGION_DIM), encoder,
                                  seed=0, region_drop=0.0)
    batch = Collate(encoder.pad_id)([dataset[i * 5] for i in range(16)])  # 16 different images
    model = build_model(cfg)
    losses = train_steps(model, batch, HingeLoss(0.2, max_violation=False))
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.slow
@pytest.mark.parametrize("head", ["esl_h", "esl_a", "cosine"])
def test_clip_heads_reduce_the_loss(image_data, tiny_clip, head):
    torch.manual_seed(0)
    root, images, _ = image_data
    cfg = make_config(encoders="clip", sim_head=head, embed_size=32, kernel_size=2, esl_levels=5, cosine_pool="mean",
                      clip_path=tiny_clip, image_size=32, clip_lr=1e-4, noclip_lr=1e-3)
    encoder = pair_of(cfg).caption_encoder(cfg, load_tokenizer("clip", tiny_clip), 77)
    dataset = KarpathyTrainDataset(load_karpathy_split("f30k", root, images, "train"), encoder, transform=ClipPreprocess(32))
    batch = Collate(encoder.pad_id)([dataset[i * 5] for i in range(16)])
    model = build_model(cfg)
    losses = train_steps(model, batch, InfoNCELoss(), lr=1e-3)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_cpu_device_keeps_freed_memory_so_steps_do_not_fault_pages_in_again():
    """A big tensor freed and allocated again costs page faults by default; on the CPU device none
    in the usual round, once the heap has grown past what the small objects in between take (the
    heap may still grow now and then, so the median round of ten is compared)."""
    script = (
        "import resource, statistics, sys, torch; sys.path.insert(0, %r)\n"
        "import devices\n"
        "if sys.argv[1] == 'cpu': devices.resolve_device('cpu')\n"
        "for _ in range(6): torch.ones(2**24).sum()\n"   # 64 MB each time
        "rounds = []\n"
        "for _ in range(10):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    torch.ones(2**24).sum()\n"
        "    rounds.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(statistics.median(rounds))\n" % ROOT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    faults = {mode: float(subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                         env=env, check=True).stdout) for mode in ("default", "cpu")}
    if faults["default"] < 1000:
        pytest.skip("this kernel maps freed tensors back without faulting every page (huge pages)")
    assert faults["cpu"] < faults["default"] / 20
