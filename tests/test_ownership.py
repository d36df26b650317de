"""A command deletes or replaces only what it can show it wrote: each writer records its entries in
FOLDER/.dimmatch-manifest.json before writing them, and a file it did not record is never touched;
--resume auto continues only a folder that holds a run of ours."""

import hashlib
import json
import os
import shutil

import pytest

from cli.main import train
from conftest import REGION_DIM, error_line, run_cli
from errors import ConfigError
from outputs.manifest import MANIFEST


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
        f"--output_dir {out} holds config.json, tensorboard, which no run of train.py wrote (no {MANIFEST} records "
        "them), and a run would replace them; choose another folder")
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
    assert error_line(train, args(region_data, tiny_bert, out), capsys).endswith(
        "already holds a run; continue it with --resume auto, replace it with --overwrite, or choose another folder")
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


# ----------------------------------------------------------------------------- the tools and the demo

def test_make_demo_data_never_replaces_a_users_data(tmp_path, capsys):
    from tools.make_demo_data import main
    folder = tmp_path / "data"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "holiday.jpg").write_bytes(b"a photo")
    before = tree_state(folder)
    small = ["--train_images", "4", "--test_images", "2", "--region_dim", "8"]
    assert error_line(main, [str(folder), *small, "--overwrite"], capsys) == (
        f"output {folder} holds images, which no command of ours wrote (no {MANIFEST} records it); "
        "tools/make_demo_data.py never replaces it: choose another folder")
    assert tree_state(folder) == before
    other = tmp_path / "demo_data"
    assert run_cli(main, [str(other), *small]) == 0
    assert error_line(main, [str(other), *small], capsys).startswith(f"{other} already holds regions, images")
    (other / "notes.txt").write_text("mine")
    assert run_cli(main, [str(other), *small, "--overwrite", "--seed", "1"]) == 0
    assert (other / "notes.txt").read_text() == "mine"
    # a file of the user's put inside a data set written whole: --overwrite refuses to take it along
    mine = other / "regions" / "f30k_precomp" / "mine.txt"
    mine.write_text("mine")
    assert error_line(main, [str(other), *small, "--overwrite"], capsys) == (
        f"output {other}: regions/f30k_precomp/mine.txt is not a file tools/make_demo_data.py or the demo wrote; "
        "move it out of regions first, or choose another folder")
    assert mine.read_text() == "mine"
    mine.unlink()
    assert run_cli(main, [str(other), *small, "--overwrite"]) == 0


def test_the_demo_never_replaces_a_users_data_or_run(tmp_path, capsys):
    from demo.__main__ import main
    out = tmp_path / "mine"
    (out / "data").mkdir(parents=True)
    (out / "data" / "thesis.tex").write_text("years of work")
    before = tree_state(out)
    assert error_line(main, ["--output", str(out), "--train_images", "4", "--test_images", "2"], capsys) == (
        f"--output {out} holds data, which no command of ours wrote (no {MANIFEST} records it); demo never replaces "
        "it: choose another folder")
    assert tree_state(out) == before
    os.rename(out / "data", out / "run_xdim")
    (out / "run_xdim" / "config.json").write_text("{}")
    line = error_line(main, ["--output", str(out), "--train_images", "4", "--test_images", "2"], capsys)
    assert line.startswith(f"--output_dir {out / 'run_xdim'} holds config.json, which no run of train.py wrote")
    assert not (out / "data").exists()


def test_overwrite_never_replaces_a_file_no_command_of_ours_wrote(short_region_checkpoint, region_data, tmp_path,
                                                                   capsys):
    from cli.main import evaluate
    sims = tmp_path / "sims.npy"
    sims.write_bytes(b"the user's own array")
    base = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--workers", "0"]
    assert error_line(evaluate, base + ["--save_sims", str(sims), "--overwrite"], capsys) == (
        f"--save_sims {sims} exists and no command of ours wrote it (no {tmp_path / MANIFEST} records it); "
        "--overwrite replaces only our own outputs: move it away, or give another name")
    assert sims.read_bytes() == b"the user's own array"
    ours = tmp_path / "ours.npy"
    assert run_cli(evaluate, base + ["--save_sims", str(ours)]) == 0
    assert run_cli(evaluate, base + ["--save_sims", str(ours), "--overwrite"]) == 0
    assert json.loads((tmp_path / MANIFEST).read_text())["files"] == {"ours.npy": "test.py", "ours.json": "test.py"}


def test_an_index_build_stopped_by_sigterm_or_killed_leaves_nothing(tmp_path):
    import signal

    import numpy as np

    from outputs.signals import stop_signals_unwind
    from errors import Stopped
    from retrieval import collection
    target = str(tmp_path / "photos.index")
    abandoned = tmp_path / "photos.index.tmp-999999"      # a build killed outright
    abandoned.mkdir()

    def chunks():
        yield np.ones((2, 4), np.float32), np.ones((2, 4), np.float32)
        os.kill(os.getpid(), signal.SIGTERM)
        yield np.ones((2, 4), np.float32), np.ones((2, 4), np.float32)

    with pytest.raises(Stopped), stop_signals_unwind(f"index {target}"):
        collection.build(target, chunks(), 4, list("abcd"), {}, first_stage="test", progress=False)
    assert os.listdir(tmp_path) == []
    deeper = str(tmp_path / "new" / "folder" / "photos.index")     # a folder that does not exist yet
    collection.build(deeper, iter([(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32))]), 4, list("abcd"), {},
                     first_stage="test", progress=False)
    assert sorted(os.listdir(deeper)) == sorted([MANIFEST, *collection.REQUIRED_FILES])


def test_an_image_name_with_a_line_break_is_refused_at_indexing(tmp_path):
    from types import SimpleNamespace

    from errors import DataError
    from pairs.clip import collection
    (tmp_path / "a\nb.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="holds a line break, which an index cannot record"):
        collection(SimpleNamespace(image_size=64, truncated_images="refuse"), str(tmp_path))


def test_a_shortlist_the_index_was_built_without_is_refused(short_region_checkpoint, region_data, tmp_path, capsys):
    from tools.retrieve import main
    index = tmp_path / "x.index"
    assert run_cli(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                          f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--device", "cpu"]) == 0
    from retrieval import collection
    # the test split's region record beside its features gives the image paths and boxes too
    assert json.loads((index / MANIFEST).read_text())["files"].keys() == set(collection.FILES)
    line = error_line(main, ["text", "--index", str(index), "--query", "a dog", "--shortlist",
                             str(short_region_checkpoint)], capsys)
    assert line.startswith(f"--shortlist {short_region_checkpoint}: index {index} was built without a shortlist "
                           "checkpoint (its first stage: ")
    (index / "notes.txt").write_text("mine")
    assert error_line(main, ["index", "--checkpoint", str(short_region_checkpoint), "--regions",
                             f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--overwrite"],
                      capsys).startswith(f"--out {index} holds notes.txt, which is not part of an index")


def test_two_demo_data_writers_into_one_folder_at_once(tmp_path, capsys):
    """The second would replace the data the first is writing: it stops in one line instead."""
    from outputs.folders import FolderLock
    from tools.make_demo_data import main
    folder = tmp_path / "data"
    held = FolderLock(str(folder), "output").acquire()
    try:
        assert error_line(main, [str(folder), "--train_images", "4", "--test_images", "2"], capsys).startswith(
            f"output {folder} is being written by pid={os.getpid()} ")
    finally:
        held.release()


def test_a_file_recorded_by_the_manifest_of_a_folder_above_may_be_replaced(tmp_path):
    """make_demo_data and the demo record their data sets from the top folder
    (data/.dimmatch-manifest.json: regions/f30k_precomp/test_caps.txt); --overwrite may replace such a
    file from its own folder, and still never a file no manifest records."""
    from outputs import manifest
    from outputs.folders import Outputs
    folder = tmp_path / "data" / "regions" / "f30k_precomp"
    folder.mkdir(parents=True)
    (folder / "test_caps.txt").write_text("a\n")
    (folder / "mine.txt").write_text("b\n")
    manifest.claim(str(tmp_path / "data"), "make_demo_data.py", ["regions/f30k_precomp/test_caps.txt"])
    assert manifest.recorded_writer(str(folder / "test_caps.txt")) == "make_demo_data.py"
    outputs = Outputs(True, "karpathy_to_precomp.py")
    outputs.file(str(folder / "test_caps.txt"), "--out_dir", ".txt")
    outputs.check()
    refused = Outputs(True, "karpathy_to_precomp.py")
    refused.file(str(folder / "mine.txt"), "--out_dir", ".txt")
    with pytest.raises(ConfigError, match="exists and no command of ours wrote it"):
        refused.check()
