"""Nothing lost: no output of a command replaces one of its inputs or another of its outputs, an
existing file is replaced only with --overwrite, and a folder being written is held by one process
(a lock that a killed run does not leave stuck)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, error_line, run_cli
from cli.commands import evaluate, train
from conftest import train_args, tree_state

TEST = (lambda argv: evaluate(argv, "test"))


def test_init_from_a_file_that_overwrite_would_remove_is_refused(short_region_checkpoint, tmp_path, region_data,
                                                                 tiny_bert, capsys):
    run = tmp_path / "run"
    shutil.copytree(short_region_checkpoint.parent, run)
    before = tree_state(run)
    source = run / "checkpoint_last.pth"
    message = error_line(train, ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--workers", "0",
                                 "--output_dir", str(run), "--init_from", str(source), "--overwrite"], capsys)
    assert message == (f"--init_from {source} is a file of the run in --output_dir {run}, which --overwrite "
                       "replaces; copy it elsewhere first, or choose another folder")
    assert tree_state(run) == before


def test_eval_outputs_may_not_collide_with_each_other_or_the_inputs(short_region_checkpoint, tmp_path, region_data,
                                                                    capsys):
    base = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0"]
    sims, ranks = tmp_path / "r.npy", tmp_path / "r.json"
    assert error_line(TEST, base + ["--save_sims", str(sims), "--save_ranks", str(ranks)], capsys) == (
        f"--save_ranks {ranks} is also {ranks} (written with --save_sims {sims}); give them different names")
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n")
    assert error_line(TEST, base + ["--save_ranks", str(ids.with_suffix(".json")), "--ids_file",
                                    str(ids.with_suffix(".json")), "--extended"], capsys) == (
        f"--save_ranks {ids.with_suffix('.json')} is an input (--ids_file {ids.with_suffix('.json')}); "
        "write it elsewhere")
    assert not os.path.exists(sims)


def test_an_existing_result_is_replaced_only_with_overwrite(short_region_checkpoint, tmp_path, region_data, capsys):
    sims = tmp_path / "sims.npy"
    base = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0",
            "--save_sims", str(sims)]
    assert run_cli(TEST, base) == 0
    first = sims.read_bytes()
    assert error_line(TEST, base, capsys) == (f"--save_sims {sims} exists already; give --overwrite to replace it, "
                                              "or another name")
    assert sims.read_bytes() == first
    assert run_cli(TEST, base + ["--overwrite"]) == 0
    record = json.loads(sims.with_suffix(".json").read_text())["provenance"]
    from provenance import array_sha256
    assert record["matrix_sha256"] == array_sha256(np.load(sims))


def test_ensemble_tool_may_not_write_over_a_member(tmp_path, capsys):
    from tools.ensemble import main
    np.save(tmp_path / "a.npy", np.zeros((2, 10), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((2, 10), np.float32))
    assert error_line(main, [str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--unverified", "--save",
                             str(tmp_path / "b.npy")], capsys) == (
        f"--save {tmp_path / 'b.npy'} is an input (matrix {tmp_path / 'b.npy'}); write it elsewhere")


def test_convert_refuses_its_input_as_output_and_our_own_format(short_region_checkpoint, tmp_path, capsys):
    from tools.convert_checkpoint import main
    copy = tmp_path / "ours.pth"
    shutil.copy(short_region_checkpoint, copy)
    assert error_line(main, [str(copy), str(copy)], capsys) == f"output {copy} is an input (input {copy}); write it elsewhere"
    assert error_line(main, [str(copy), str(tmp_path / "out.pth")], capsys).startswith(
        f"{copy} is already a .pth of ours (region_bert + xdim); test.py and testall.py read it as it is")
    assert not (tmp_path / "out.pth").exists()


def start_training(region_data, tiny_bert, out, *extra):
    command = [sys.executable, os.path.join(ROOT, "train.py"),
               *train_args(region_data[0], tiny_bert, out, "--num_epochs", "30", *extra)]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_two_runs_into_one_folder_the_second_is_refused(tmp_path, region_data, tiny_bert):
    """The first run holds the folder; a second one, started while it trains, stops with one line and
    writes nothing there (even with --overwrite)."""
    out = tmp_path / "run"
    first = start_training(region_data, tiny_bert, out)
    try:
        wait_for(out / "config.json")
        for extra in ([], ["--overwrite"]):
            second = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                                     *train_args(region_data[0], tiny_bert, out, "--seed", "5", *extra)],
                                    cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert second.returncode == 2
            line = second.stderr.strip()
            assert line.startswith(f"error: --output_dir {out} ") and "\n" not in line
        assert json.loads((out / "config.json").read_text())["seed"] == 0      # still the first run's
        assert first.poll() is None                                             # which trains on
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, region_data, tiny_bert, caplog):
    """A run killed with SIGKILL leaves its lock file; the kernel released the lock itself, so the
    next run (here --resume auto) takes it over and says so."""
    out = tmp_path / "run"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out.mkdir()
    (out / ".lock").write_text(f"pid={dead.pid} host={os.uname().nodename} since=2026-01-01T00:00:00\n")
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "2", "--resume", "auto")) == 0
    assert any(f"taking over the lock of process {dead.pid}, which has ended" in r.message for r in caplog.records)
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 2
    assert (out / ".lock").read_text() == ""          # a run that ends names no holder
    caplog.clear()
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "3", "--resume", "auto")) == 0
    assert not [r for r in caplog.records if "taking over" in r.message]


@pytest.mark.slow
def test_a_lock_held_by_a_living_process_is_refused(tmp_path, region_data, tiny_bert, capsys):
    from outputs.folders import FolderLock
    out = tmp_path / "run"
    holder = FolderLock(str(out), "--output_dir").acquire()
    try:
        child = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                                *train_args(region_data[0], tiny_bert, out, "--resume", "auto")],
                               cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        holder.release()
    assert child.returncode == 2
    line = child.stderr.strip()
    assert line.startswith(f"error: --output_dir {out} is being written by pid={os.getpid()} "
                           f"host={os.uname().nodename} since=")
    assert line.endswith("; wait for it to end or stop it, or choose another folder")
    assert os.listdir(out) == [".lock"]


def test_report_folder_is_checked_before_work(short_region_checkpoint, tmp_path, region_data, capsys):
    from tools.report import main
    out = tmp_path / "page"
    args = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--out", str(out),
            "--device", "cpu"]
    assert run_cli(main, args) == 0
    first = (out / "index.html").read_bytes()
    assert error_line(main, args, capsys) == (f"--out {out / 'index.html'} exists already; give --overwrite to "
                                              "replace it, or another name")
    assert (out / "index.html").read_bytes() == first
    record = json.loads((out / "report.json").read_text())
    assert record["kind"] == "report" and record["data"]["split"] == "test"
    assert run_cli(main, args + ["--overwrite"]) == 0


def test_the_same_data_twice_into_one_folder(tmp_path, region_data, tiny_bert, capsys):
    """A finished run's folder: a second start is refused without touching it; --resume auto on a
    finished run changes nothing but train.log."""
    out = tmp_path / "run"
    args = train_args(region_data[0], tiny_bert, out, "--max_steps", "3")
    assert run_cli(train, args) == 0
    state = tree_state(out)
    assert error_line(train, args, capsys).endswith("already holds a run; continue it with --resume auto, replace "
                                                    "it with --overwrite, or choose another folder")
    assert tree_state(out) == state


def test_save_ranks_may_not_replace_an_inputs_record_or_a_run_file(short_region_checkpoint, tmp_path, region_data,
                                                                    capsys):
    base = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0"]
    sims = tmp_path / "in.npy"
    assert run_cli(TEST, base + ["--save_sims", str(sims)]) == 0
    before = (tmp_path / "in.json").read_bytes()
    message = error_line(TEST, base + ["--rerank_k", "5", "--compare_sims", str(sims), "--save_ranks",
                                       str(tmp_path / "in.json"), "--overwrite"], capsys)
    assert message == (f"--save_ranks {tmp_path / 'in.json'} is an input (the record of --compare_sims {sims}); "
                       "write it elsewhere")
    assert (tmp_path / "in.json").read_bytes() == before
    run_config = short_region_checkpoint.parent / "config.json"
    message = error_line(TEST, base + ["--save_ranks", str(run_config), "--overwrite"], capsys)
    assert message == (f"--save_ranks {run_config} would replace a file of the training run in "
                       f"{short_region_checkpoint.parent}; write it elsewhere")


def test_a_result_written_meanwhile_by_another_command_is_not_replaced(tmp_path):
    """Two evaluations into one --save_sims: the check before work passed for both; the second to
    finish is refused in one line when it publishes, and the first one's file is kept."""
    from checkpoints.atomic import atomic_save_npy
    from errors import ConfigError
    target = tmp_path / "s.npy"
    atomic_save_npy(np.zeros(3), str(target), replace=False)
    with pytest.raises(ConfigError, match="was written by another command while this one ran; nothing was replaced"):
        atomic_save_npy(np.ones(3), str(target), replace=False)
    assert np.load(target).tolist() == [0, 0, 0] and os.listdir(tmp_path) == ["s.npy"]
    atomic_save_npy(np.ones(3), str(target), replace=True)                 # --overwrite
    assert np.load(target).tolist() == [1, 1, 1]


def test_the_global_loss_is_refused_where_the_score_is_its_own_first_stage(tmp_path, region_data, tiny_bert, capsys):
    message = error_line(train, train_args(region_data[0], tiny_bert, tmp_path / "run", "--sim_head", "cosine",
                                           "--global_loss_weight", "1"), capsys)
    assert message.startswith("--global_loss_weight 1.0: the cosine head's score is an inner product already")
    assert not (tmp_path / "run").exists()


def test_an_output_may_never_replace_the_evaluated_data(short_region_checkpoint, region_data, image_data, tiny_clip,
                                                        tmp_path, capsys):
    """Not even with --overwrite: the features, and the annotation file (by --save_ranks or by the
    .json that --save_sims writes beside its matrix)."""
    data = tmp_path / "data"
    shutil.copytree(region_data[0], data)
    features = data / "f30k_precomp" / "test_ims.npy"
    before = features.read_bytes()
    message = error_line(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", str(data),
                                "--workers", "0", "--save_sims", str(features), "--overwrite"], capsys)
    assert message == f"--save_sims {features} is an input (the data of split test {features}); write it elsewhere"
    assert features.read_bytes() == before
    root, images, _ = image_data
    clip = tmp_path / "clip"
    assert run_cli(train, ["--encoders", "clip", "--dataset", "f30k", "--image_root", images, "--ann_path", root,
                           "--clip_path", tiny_clip, "--batch_size", "16", "--max_steps", "1", "--workers", "0",
                           "--device", "cpu", "--output_dir", str(clip)]) == 0
    annotations = os.path.join(root, "dataset_flickr30k.json")
    base = ["--checkpoint", str(clip / "checkpoint_last.pth"), "--workers", "0", "--overwrite"]
    assert error_line(TEST, base + ["--save_ranks", annotations], capsys) == \
        f"--save_ranks {annotations} is an input (the data of split test {annotations}); write it elsewhere"
    sims = os.path.join(root, "dataset_flickr30k.npy")
    assert error_line(TEST, base + ["--save_sims", sims], capsys) == (
        f"{annotations} (written with --save_sims {sims}) is an input (the data of split test {annotations}); "
        "write it elsewhere")


def test_outputs_in_a_missing_folder_are_written_there(short_region_checkpoint, region_data, tmp_path):
    sims = tmp_path / "new" / "deeper" / "s.npy"
    ranks = tmp_path / "other" / "r.json"
    assert run_cli(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0",
                          "--save_sims", str(sims), "--save_ranks", str(ranks)]) == 0
    assert sims.is_file() and sims.with_suffix(".json").is_file() and ranks.is_file()


def test_an_overwrite_that_fails_before_its_first_checkpoint_gives_the_run_back(tmp_path, region_data, tiny_bert,
                                                                                capsys):
    out = tmp_path / "run"
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "3")) == 0
    before = tree_state(out)
    data = tmp_path / "data"
    shutil.copytree(region_data[0], data)
    features = np.load(data / "f30k_precomp" / "train_ims.npy")
    features[:] = np.nan                       # found at the first batch, after the start's checks
    np.save(data / "f30k_precomp" / "train_ims.npy", features)
    message = error_line(train, train_args(data, tiny_bert, out, "--overwrite"), capsys)
    assert "NaN or infinite values" in message
    assert {k: v for k, v in tree_state(out).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}


def test_a_start_that_fails_leaves_no_folder_it_made(tmp_path, region_data, capsys):
    """--output_dir out/sub/run that fails after the folder was locked (a missing backbone is found by
    the trainer) removes run/, sub/ and out/ again; a parent that held something stays."""
    missing_bert = str(tmp_path / "no_bert")
    line = error_line(train, train_args(region_data[0], missing_bert, tmp_path / "out" / "sub" / "run"), capsys)
    assert line.startswith(f"--bert_path {missing_bert}: no such folder")
    assert sorted(os.listdir(tmp_path)) == []
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    error_line(train, train_args(region_data[0], missing_bert, tmp_path / "kept" / "sub" / "run"), capsys)
    assert sorted(os.listdir(tmp_path / "kept")) == ["notes.txt"]


def test_overwrite_keeps_a_users_file_named_as_earlier_versions_best_model(tmp_path, region_data, tiny_bert):
    """model_best.pth was the best model of earlier versions; a run that writes the model_best/ folder
    never wrote one, so a file of that name in its folder is the user's and --overwrite keeps it."""
    out = tmp_path / "run"
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "2")) == 0
    (out / "model_best.pth").write_text("my weights")
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--max_steps", "2", "--overwrite")) == 0
    assert (out / "model_best.pth").read_text() == "my weights"
