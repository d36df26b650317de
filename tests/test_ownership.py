"""A command deletes or replaces only what it can show it wrote: each writer records its entries in
FOLDER/.dimmatch-manifest.json before writing them, and a file it did not record is never touched;
--resume auto continues only a folder that holds a run of ours."""

import hashlib
import json
import os
import shutil

import pytest

from cli.main import train
from cli.manifest import MANIFEST
from conftest import REGION_DIM, error_line, run_cli


def tree_state(folder) -> dict:
    state = {}
    for base, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(base, name), "rb") as handle:
                state[os.path.relpath(os.path.join(base, name), folder)] = hashlib.sha1(handle.read()).hexdigest()
    return state


def args(region_data, bert, out, *extra):
    return ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", str(bert), "--img_dim",
            str(REGION_DIM), "--batch_size", "16", "--embed_size", "16", "--workers", "0", "--device", "cpu",
            "--max_steps", "2", "--save_every_steps", "0", "--output_dir", str(out), *extra]


def foreign_folder(path):
    """A folder another tool wrote: a HuggingFace-style config.json and TensorBoard event files."""
    os.makedirs(path / "tensorboard")
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    (path / "tensorboard" / "events.out.tfevents.1.other.0").write_bytes(b"theirs")
    return tree_state(path)


@pytest.mark.parametrize("extra", [["--resume", "auto"], ["--overwrite"], []])
def test_a_folder_without_a_run_of_ours_is_never_replaced(tmp_path, region_data, tiny_bert, capsys, extra):
    out = tmp_path / "hf_model"
    before = foreign_folder(out)
    assert error_line(train, args(region_data, tiny_bert, out, *extra), capsys) == (
        f"--output_dir {out} holds config.json, tensorboard, which no run of train.py wrote (see {MANIFEST}), and a "
        "run would replace them; choose another folder")
    assert tree_state(out) == before


def test_overwrite_into_the_backbone_folder_leaves_it_alone(tmp_path, region_data, tiny_bert, capsys):
    bert = tmp_path / "bert"
    shutil.copytree(tiny_bert, bert)
    before = tree_state(bert)
    line = error_line(train, args(region_data, bert, bert, "--overwrite"), capsys)
    assert line.startswith(f"--output_dir {bert} holds config.json") and line.endswith("choose another folder")
    assert tree_state(bert) == before


def test_resume_auto_starts_a_new_folder_and_continues_only_ours(tmp_path, region_data, tiny_bert):
    out = tmp_path / "run"
    assert run_cli(train, args(region_data, tiny_bert, out, "--resume", "auto")) == 0
    written = json.loads((out / MANIFEST).read_text())["files"]
    assert {"checkpoint_last.pth", "config.json", "train.log"} <= set(written)
    assert any(name.startswith("tensorboard/events.out.tfevents.") for name in written)
    assert set(written.values()) == {"train.py"}


def test_users_files_beside_a_run_are_kept(tmp_path, region_data, tiny_bert, capsys):
    """A folder of the user's own files is no run: a run starts beside them, and --overwrite later
    sets aside only the run's files, even inside tensorboard/."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert run_cli(train, args(region_data, tiny_bert, out)) == 0
    (out / "tensorboard" / "my_plot.png").write_bytes(b"mine too")
    assert error_line(train, args(region_data, tiny_bert, out), capsys).endswith("already holds a run; continue it "
                                                                                 "with --resume auto, replace it with "
                                                                                 "--overwrite, or choose another folder")
    assert run_cli(train, args(region_data, tiny_bert, out, "--overwrite")) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "tensorboard" / "my_plot.png").read_bytes() == b"mine too"
    assert len([name for name in os.listdir(out / "tensorboard") if name.startswith("events.")]) == 1


def test_a_half_written_checkpoint_of_a_killed_run_is_removed_at_the_next_start(tmp_path, region_data, tiny_bert):
    out = tmp_path / "run"
    assert run_cli(train, args(region_data, tiny_bert, out)) == 0
    partial = out / "checkpoint_last.pth.tmp-999999"
    partial.write_bytes(b"half a checkpoint")
    (out / "mine.tmp-1").write_text("not a run file")
    assert run_cli(train, args(region_data, tiny_bert, out, "--resume", "auto", "--max_steps", "3")) == 0
    assert not partial.exists() and (out / "mine.tmp-1").exists()
