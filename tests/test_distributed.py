"""DDP on CPU with gloo: ranks stay identical, and the gathered loss gives the single-process gradient."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from configs import train_config
from training.trainer import Trainer
from global_batch import global_batch

WORKER = os.path.join(ROOT, "tests", "ddp_worker.py")


def torchrun(*args, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(ROOT, "tests")}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def clip_args(image_data, tiny_clip, out):
    root, images, _ = image_data
    return ["--encoders", "clip", "--sim_head", "esl_a", "--dataset", "f30k", "--image_root", images,
            "--ann_path", root, "--clip_path", tiny_clip, "--batch_size", "8", "--workers", "0", "--device", "cpu",
            "--output_dir", str(out), "--noclip_lr", "1e-3", "--clip_lr", "1e-4"]


@pytest.mark.slow
def test_ranks_keep_identical_weights(tmp_path, region_data, tiny_bert):
    out = tmp_path / "ddp"
    out.mkdir()
    args = ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert, "--img_dim", "64",
            "--embed_size", "32", "--batch_size", "16", "--num_epochs", "1", "--max_steps", "5", "--workers", "0",
            "--device", "cpu", "--output_dir", str(out)]
    torchrun(WORKER, "train", str(out), *args)
    first, second = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    model = Trainer(train_config(args), torch.device("cpu")).model
    initial = dict(model.named_parameters())
    # parameters: BatchNorm running statistics are per process on CPU (SyncBatchNorm needs CUDA)
    changed = 0
    for key, value in initial.items():
        assert torch.equal(first[key], second[key]), key
        changed += not torch.equal(first[key], value)
    assert changed > len(initial) // 2          # they trained, together
    saved = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert saved["progress"]["global_step"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("size", [8, 7])
def test_two_process_gradient_equals_the_single_process_one(tmp_path, image_data, tiny_clip, size):
    """8 pairs: 4 per rank; 7 (a kept last partial batch): 4 and 3."""
    out = tmp_path / "grad"
    out.mkdir()
    args = clip_args(image_data, tiny_clip, out)
    torchrun(WORKER, f"grad:{size}", str(out), *args)
    ddp = torch.load(out / "ddp_grads.pt", weights_only=True)

    torch.manual_seed(0)
    trainer = Trainer(train_config(args), torch.device("cpu"))
    batch = global_batch(trainer.cfg, trainer.train_set, trainer.caption_encoder.pad_id, size)
    loss = trainer.model(batch["images"], None, batch["input_ids"], batch["lengths"], trainer.criterion,
                         trainer.caption_encoder.pad_id)
    loss.backward()
    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for name, p in trainer.model.named_parameters():
        assert torch.allclose(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.slow
def test_train_py_under_torchrun_writes_one_checkpoint(tmp_path, image_data, tiny_clip):
    out = tmp_path / "cli"
    # 320 pairs in global batches of 18: 17 full ones and a kept last batch of 14, 7 on each rank
    torchrun(os.path.join(ROOT, "train.py"), *clip_args(image_data, tiny_clip, out), "--num_epochs", "1",
             "--batch_size", "18")
    assert (out / "model_best" / "model.safetensors").is_file() and (out / "checkpoint_last.pth").is_file()
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 18
    assert not [name for name in os.listdir(out) if ".tmp-" in name]


@pytest.mark.slow
def test_test_py_under_torchrun_shards_the_scoring(tmp_path, region_data, tiny_bert):
    """Two gloo processes share the caption shards; rank 0 assembles, prints and saves the same
    matrix and Recall as one process, and rank 1 prints nothing."""
    import json

    import numpy as np

    from conftest import REGION_DIM, run_cli
    from cli.commands import evaluate, train
    out = tmp_path / "run"
    assert run_cli(train, ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
                           "--img_dim", str(REGION_DIM), "--embed_size", "32", "--batch_size", "16",
                           "--max_steps", "3", "--workers", "0", "--device", "cpu", "--output_dir", str(out)]) == 0
    common = ["--checkpoint", str(out / "checkpoint_last.pth"), "--workers", "0", "--device", "cpu",
              "--eval_mem_gb", "0.0001"]
    assert run_cli(lambda argv: evaluate(argv, "test"), common + ["--save_sims", str(tmp_path / "one.npy")]) == 0
    result = torchrun(os.path.join(ROOT, "test.py"), *common, "--save_sims", str(tmp_path / "two.npy"))
    one, two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "two.npy")
    assert np.abs(one - two).max() <= 1e-6
    assert json.loads((tmp_path / "two.json").read_text())["metrics"] == \
        json.loads((tmp_path / "one.json").read_text())["metrics"]
    assert result.stdout.count("rSum") == 1 and result.stdout.count("Image to text") == 1
