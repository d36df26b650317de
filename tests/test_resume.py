"""A run stopped mid-epoch (by --max_steps, by any stop signal sent to its whole process group with
data-loader workers, under torchrun, during validation, or by SIGKILL) and resumed with --resume auto
ends exactly as the uninterrupted run: the same weights, RNG, counters, limits, validations
(metrics.jsonl), log points and TensorBoard points."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REGION_DIM, ROOT, error_line, run_cli
from cli.commands import train
from conftest import train_args


def args_for(region_data, tiny_bert, out, *extra):
    return ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
            "--img_dim", str(REGION_DIM), "--embed_size", "32", "--sim_head", "esl_h", "--batch_size", "16",
            "--num_epochs", "2", "--device", "cpu", "--output_dir", str(out), "--seed", "7", "--log_every", "4",
            *extra]


def final_state(out):
    return torch.load(os.path.join(out, "checkpoint_last.pth"), weights_only=True)


def history(out) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"), encoding="utf-8")]
    return [{key: value for key, value in line.items() if key not in ("time", "seconds")} for line in lines]


def logged_steps(out) -> list[int]:
    return [int(line.split("(global ")[1].split(")")[0]) for line in open(os.path.join(out, "train.log"))
            if "pairs/s" in line]


def assert_same_run(a_dir, b_dir):
    a, b = final_state(a_dir), final_state(b_dir)
    assert a["progress"] == b["progress"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert history(a_dir) == history(b_dir)
    assert sorted(set(logged_steps(b_dir))) == logged_steps(a_dir)
    assert json.loads((a_dir / "best_metrics.json").read_text()) == json.loads((b_dir / "best_metrics.json").read_text())


@pytest.fixture(scope="module")
def straight(tmp_path_factory, region_data, tiny_bert):
    """The uninterrupted run: 2 epochs of 30 steps, validated after each."""
    out = tmp_path_factory.mktemp("straight")
    assert run_cli(train, args_for(region_data, tiny_bert, out, "--workers", "0")) == 0
    assert [line["global_step"] for line in history(out)] == [30, 60]
    return out


def test_stop_mid_epoch_and_resume_is_exact(tmp_path, region_data, tiny_bert, straight):
    interrupted = tmp_path / "interrupted"
    assert run_cli(train, args_for(region_data, tiny_bert, interrupted, "--workers", "0", "--max_steps", "41")) == 0
    stopped = final_state(interrupted)
    assert stopped["progress"]["epoch"] == 1 and stopped["progress"]["step_in_epoch"] == 11
    # a resumed run keeps its limits: without --max_steps it would stop again at once
    assert run_cli(train, args_for(region_data, tiny_bert, interrupted, "--workers", "0", "--resume", "auto")) == 0
    assert final_state(interrupted)["progress"]["global_step"] == 41
    assert run_cli(train, args_for(region_data, tiny_bert, interrupted, "--workers", "0", "--resume", "auto",
                                   "--max_steps", "0")) == 0
    assert_same_run(straight, interrupted)


def start(command, out):
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_step(process, out, step: int, timeout: float = 120) -> None:
    checkpoint = out / "checkpoint_last.pth"
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if checkpoint.exists():
            try:
                if torch.load(checkpoint, weights_only=True)["progress"]["global_step"] >= step:
                    return
            except (RuntimeError, EOFError):       # replaced while being read
                pass
        time.sleep(0.05)
    raise AssertionError(f"the run did not reach step {step}")


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_to_the_process_group_then_resume_is_exact(tmp_path, region_data, tiny_bert, straight, stop):
    """The signal goes to the whole process group, data-loader workers included, as `timeout`, Slurm
    (`scancel`, `--signal=USR1@90`), `kill -- -PGID` and Ctrl-C send it. SIGKILL: the run dies
    between checkpoints. The others: it finishes the step, writes checkpoint_last and exits with
    128 + the signal, saying so on its last line. Every way, resuming reproduces the straight run."""
    stopped = tmp_path / "stopped"
    process = start([sys.executable, os.path.join(ROOT, "train.py"),
                     *args_for(region_data, tiny_bert, stopped, "--workers", "2", "--save_every_steps", "3")], stopped)
    try:
        wait_for_step(process, stopped, 9)
    finally:
        os.killpg(process.pid, stop)
        _, stderr = process.communicate(timeout=120)
    step = final_state(stopped)["progress"]["global_step"]
    if stop == signal.SIGKILL:
        assert process.returncode == -signal.SIGKILL
    else:
        assert process.returncode == 128 + stop, stderr
        assert "Traceback" not in stderr and "killed by signal" not in stderr
        assert stderr.strip().splitlines()[-1] == (f"stopped by {signal.Signals(stop).name}: checkpoint_last "
                                                   f"written after step {step}; continue with --resume auto")
    assert 9 <= step < 60, "the run was not stopped mid-training"
    assert run_cli(train, args_for(region_data, tiny_bert, stopped, "--workers", "0", "--resume", "auto")) == 0
    assert_same_run(straight, stopped)


def test_a_signal_during_validation_leaves_it_to_the_resumed_run(tmp_path, region_data, tiny_bert, straight,
                                                                 monkeypatch):
    """SIGTERM arrives while epoch 0 is being validated: the run stops at once with checkpoint_last
    marking that validation as pending; the resumed run does it first, then goes on."""
    from training.validation import Validator
    validate = Validator.__call__

    def signalled(self, state):
        os.kill(os.getpid(), signal.SIGTERM)       # delivered inside the validation
        return validate(self, state)

    out = tmp_path / "run"
    monkeypatch.setattr(Validator, "__call__", signalled)
    assert run_cli(train, args_for(region_data, tiny_bert, out, "--workers", "0")) == 128 + signal.SIGTERM
    progress = final_state(out)["progress"]
    assert progress["global_step"] == 30 and progress["validation_pending"]
    assert not (out / "metrics.jsonl").exists() or history(out) == []
    monkeypatch.setattr(Validator, "__call__", validate)
    assert run_cli(train, args_for(region_data, tiny_bert, out, "--workers", "0", "--resume", "auto")) == 0
    assert_same_run(straight, out)


def test_limits_and_log_points_continue_across_resume(tmp_path, region_data, tiny_bert, monkeypatch):
    """--max_steps 45, --log_every 4, --save_every_steps 7: a run stopped by SIGTERM at step 13 and
    resumed with --resume auto alone stops at 45, logs at the same steps and validates at 30, as
    the run that was never stopped."""
    from training.step import OptimisationStep
    limits = ("--workers", "0", "--max_steps", "45", "--save_every_steps", "7")
    whole = tmp_path / "whole"
    assert run_cli(train, args_for(region_data, tiny_bert, whole, *limits)) == 0
    step = OptimisationStep.__call__

    def signalled(self, batch, global_step):
        if global_step == 12:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch, global_step)

    out = tmp_path / "run"
    monkeypatch.setattr(OptimisationStep, "__call__", signalled)
    assert run_cli(train, args_for(region_data, tiny_bert, out, *limits)) == 128 + signal.SIGTERM
    assert final_state(out)["progress"]["global_step"] == 13
    monkeypatch.setattr(OptimisationStep, "__call__", step)
    assert run_cli(train, ["--output_dir", str(out), "--resume", "auto"]) == 0
    assert final_state(out)["progress"]["global_step"] == 45
    assert logged_steps(whole) == list(range(4, 45, 4))
    assert_same_run(whole, out)


def test_metrics_history_survives_a_kill_between_validation_and_checkpoint(tmp_path, region_data, tiny_bert,
                                                                           straight):
    """A run killed after writing a validation's line but before its checkpoint: resuming from the
    earlier checkpoint cuts the line and validates again, so no line is lost or repeated."""
    from training.history import MetricsHistory
    out = tmp_path / "run"
    assert run_cli(train, args_for(region_data, tiny_bert, out, "--workers", "0", "--max_steps", "25")) == 0
    MetricsHistory(str(out)).append({"global_step": 30, "rsum": -1.0})       # as if killed right after
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"global_step": 3')                                     # and a torn line
    assert run_cli(train, args_for(region_data, tiny_bert, out, "--workers", "0", "--resume", "auto",
                                   "--max_steps", "0")) == 0
    assert_same_run(straight, out)


@pytest.mark.slow
def test_sigterm_to_torchrun_leaves_a_checkpoint_that_resumes_exactly(tmp_path, region_data, tiny_bert):
    """torchrun forwards the signal to its ranks (which the group kill also reached): they agree on
    the step, rank 0 writes checkpoint_last, and a resumed torchrun run equals the straight one."""
    def torchrun(out, *extra):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                os.path.join(ROOT, "train.py"), *args_for(region_data, tiny_bert, out, "--workers", "1", *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight_ddp = tmp_path / "straight"
    assert subprocess.run(torchrun(straight_ddp), cwd=ROOT, env=env, capture_output=True, timeout=300).returncode == 0
    stopped = tmp_path / "stopped"
    process = subprocess.Popen(torchrun(stopped, "--save_every_steps", "3"), cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_step(process, stopped, 9)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "stopped by SIGTERM: checkpoint_last written after step" in stderr
    assert 9 <= final_state(stopped)["progress"]["global_step"] < 60
    resumed = subprocess.run(torchrun(stopped, "--resume", "auto"), cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_run(straight_ddp, stopped)


def test_a_run_that_never_checkpointed_starts_again_with_resume_auto(tmp_path, region_data, tiny_bert, capsys):
    """Killed (or failed) before its first checkpoint: the folder holds config.json and train.log
    only, and --resume auto (what a requeued job runs) starts it afresh; a model_best without a
    checkpoint_last is refused, and files of the user's are left alone."""
    from outputs.folders import claim_run
    out = tmp_path / "run"
    claim_run(str(out))             # a run records its files in the folder's manifest before writing them
    (out / "config.json").write_text("{}")
    (out / "train.log").write_text("an earlier start\n")
    (out / "notes.txt").write_text("mine")
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "2", "--resume", "auto")) == 0
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 2
    assert "an earlier start" not in (out / "train.log").read_text() and (out / "notes.txt").read_text() == "mine"
    assert not (out / ".previous-run").exists()
    os.remove(out / "checkpoint_last.pth")
    (out / "model_best").mkdir()
    assert error_line(train, train_args(region_data[0], tiny_bert, out, "--resume", "auto"), capsys) == (
        f"--resume auto: {out} holds model_best but no checkpoint_last.pth, so there is nothing to resume; keep "
        "the run and start elsewhere, or replace it with --overwrite")


def test_a_resume_on_another_tokenizer_or_other_data_is_refused(tmp_path, region_data, tiny_bert, capsys):
    out = tmp_path / "run"
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "3")) == 0
    swapped = tmp_path / "swapped"
    shutil.copytree(tiny_bert, swapped)
    vocab = (swapped / "vocab.txt").read_text(encoding="utf-8").split("\n")
    vocab[10], vocab[11] = vocab[11], vocab[10]
    (swapped / "vocab.txt").write_text("\n".join(vocab), encoding="utf-8")
    message = error_line(train, ["--output_dir", str(out), "--resume", "auto", "--bert_path", str(swapped)], capsys)
    assert message.startswith(f"the tokenizer of --bert_path {swapped} maps 2 of ")
    data = tmp_path / "shuffled"
    shutil.copytree(region_data[0], data)
    caps = data / "f30k_precomp" / "train_caps.txt"
    lines = caps.read_text().splitlines()
    lines[0], lines[7] = lines[7], lines[0]
    caps.write_text("\n".join(lines) + "\n")
    assert error_line(train, ["--output_dir", str(out), "--resume", "auto", "--data_path", str(data)], capsys) == (
        f"--resume {out / 'checkpoint_last.pth'}: the training data differ from the run's (captions_sha256); give "
        "the data it was started with")
    shutil.rmtree(tiny_bert + "_gone", ignore_errors=True)


def test_a_run_resumes_from_another_folder_without_its_backbone_folder(tmp_path, region_data, tiny_bert):
    """Paths are saved absolute, and the checkpoint carries its tokenizer and architecture."""
    bert = tmp_path / "bert"
    shutil.copytree(tiny_bert, bert)
    out = tmp_path / "run"
    relative = os.path.relpath(bert, ROOT)
    assert run_cli(train, train_args(os.path.relpath(region_data[0], ROOT), relative, os.path.relpath(out, ROOT),
                                     "--max_steps", "2")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["bert_path"] == str(bert) and config["data_path"] == region_data[0]
    shutil.rmtree(bert)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--output_dir", str(out), "--resume",
                             "auto", "--max_steps", "4"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 4


def test_resume_of_another_folders_checkpoint_is_refused(short_region_checkpoint, tmp_path, capsys):
    message = error_line(train, ["--output_dir", str(tmp_path / "new"), "--resume", str(short_region_checkpoint)],
                         capsys)
    assert message.startswith(f"--resume {short_region_checkpoint} continues the run in "
                              f"{short_region_checkpoint.parent}, not in --output_dir {tmp_path / 'new'}")
