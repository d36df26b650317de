"""A run stopped mid-epoch (cleanly or by SIGKILL) and resumed ends with exactly the weights of
an uninterrupted run: same seed, deterministic CPU path, dropout and augmentation included."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REGION_DIM, ROOT, run_cli
from cli.commands import train


def args_for(region_data, tiny_bert, out, *extra):
    return ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
            "--img_dim", str(REGION_DIM), "--embed_size", "32", "--sim_head", "esl_h", "--batch_size", "16",
            "--num_epochs", "2", "--device", "cpu", "--output_dir", str(out), "--seed", "7", *extra]


def final_state(out):
    saved = torch.load(os.path.join(out, "checkpoint_last.pth"), weights_only=True)
    return saved


def assert_same_run(a, b):
    assert a["progress"] == b["progress"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory, region_data, tiny_bert):
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    assert run_cli(train, args_for(region_data, tiny_bert, out, "--workers", "0")) == 0
    return out


def test_stop_mid_epoch_and_resume_is_exact(tmp_path, region_data, tiny_bert, straight):
    interrupted = tmp_path / "interrupted"
    assert run_cli(train, args_for(region_data, tiny_bert, interrupted, "--workers", "0", "--max_steps", "41")) == 0
    stopped = final_state(interrupted)
    assert stopped["progress"]["epoch"] == 1 and stopped["progress"]["step_in_epoch"] == 11
    assert run_cli(train, args_for(region_data, tiny_bert, interrupted, "--workers", "0", "--resume", "auto",
                                   "--max_steps", "0")) == 0
    assert_same_run(final_state(straight), final_state(interrupted))


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_signal_then_resume_is_exact(tmp_path, region_data, tiny_bert, straight, stop):
    """SIGKILL: the run dies between checkpoints; SIGTERM (pre-emption) and Ctrl-C: it finishes the
    step, writes checkpoint_last and exits (0 for SIGTERM, 130 for Ctrl-C, the data-loader workers
    untouched). Every way, resuming reproduces the straight run."""
    stopped = tmp_path / "stopped"
    command = [sys.executable, os.path.join(ROOT, "train.py"),
               *args_for(region_data, tiny_bert, stopped, "--workers", "2", "--save_every_steps", "3")]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    checkpoint = stopped / "checkpoint_last.pth"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and process.poll() is None:
            if checkpoint.exists() and torch.load(checkpoint, weights_only=True)["progress"]["global_step"] >= 9:
                break
            time.sleep(0.05)
    finally:
        # Ctrl-C reaches the whole foreground process group, data-loader workers included
        os.killpg(process.pid, stop) if stop == signal.SIGINT else process.send_signal(stop)
        _, stderr = process.communicate(timeout=120)
    step = final_state(stopped)["progress"]["global_step"]
    if stop != signal.SIGKILL:
        assert process.returncode == 128 + stop
        assert stderr.strip().splitlines()[-1] == (f"stopped by {signal.Signals(stop).name}: checkpoint_last "
                                                   f"written after step {step}; continue with --resume auto")
    assert 9 <= step < 60, "the run was not stopped mid-training"
    assert run_cli(train, args_for(region_data, tiny_bert, stopped, "--workers", "0", "--resume", "auto")) == 0
    assert_same_run(final_state(straight), final_state(stopped))
