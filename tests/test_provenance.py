"""Every saved artifact says where it came from (the checkpoint's content, the split, the data), and
every reader refuses a mismatch in one line; every tool checks its inputs before any work."""

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from conftest import error_line, run_cli, train_short_region
from cli.commands import evaluate
from provenance import file_sha256

TEST = (lambda argv: evaluate(argv, "test"))


def ensemble_tool(argv):
    from tools.ensemble import main
    return main(argv)


def retrieve(argv):
    from tools.retrieve import main
    return main(argv)


@pytest.fixture(scope="module")
def second_checkpoint(tmp_path_factory, region_data, tiny_bert):
    return train_short_region(tmp_path_factory.mktemp("second") / "run", region_data, tiny_bert, "--max_steps", "3",
                              "--seed", "4")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, short_region_checkpoint, region_data):
    """Score matrices of the test and dev splits, with their records."""
    folder = tmp_path_factory.mktemp("saved")
    for split in ("test", "dev"):
        assert run_cli(TEST, ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0],
                              "--workers", "0", "--split", split, "--save_sims", str(folder / f"{split}.npy"),
                              "--save_ranks", str(folder / f"{split}_ranks.json")]) == 0
    return folder


def test_score_matrices_and_ranks_record_the_checkpoint_split_and_data(saved, short_region_checkpoint):
    from provenance import array_sha256
    record = json.loads((saved / "test.json").read_text())["provenance"]
    assert record["checkpoints"] == [{"sha256": file_sha256(short_region_checkpoint),
                                      "file": os.path.abspath(short_region_checkpoint)}]
    assert record["data"]["split"] == "test" and record["data"]["images"] == 10 and record["data"]["captions"] == 50
    assert record["matrix_sha256"] == array_sha256(np.load(saved / "test.npy"))
    ranks = json.loads((saved / "test_ranks.json").read_text())
    assert ranks["provenance"]["checkpoints"] == record["checkpoints"] and len(ranks["i2t"]) == 10


def test_the_ensemble_tool_refuses_matrices_of_other_data(saved, tmp_path, capsys):
    message = error_line(ensemble_tool, [str(saved / "test.npy"), str(saved / "dev.npy")], capsys)
    assert message == (f"{saved / 'dev.npy'} was computed on other data than {saved / 'test.npy'} (split, captions, "
                       "images (the image files, or the feature file and its rows) differ; split 'dev' vs 'test')")


def test_the_ensemble_tool_refuses_a_replaced_matrix_or_one_without_its_record(saved, tmp_path, capsys):
    for name in ("test.npy", "test.json"):
        shutil.copy(saved / name, tmp_path / name)
    np.save(tmp_path / "test.npy", np.load(saved / "test.npy") + 1)
    message = error_line(ensemble_tool, [str(saved / "test.npy"), str(tmp_path / "test.npy")], capsys)
    assert message == (f"{tmp_path / 'test.npy'} is not the matrix {tmp_path / 'test.json'} describes (its content "
                       "differs); was it replaced?")
    os.remove(tmp_path / "test.json")
    assert error_line(ensemble_tool, [str(saved / "test.npy"), str(tmp_path / "test.npy")], capsys).startswith(
        f"{tmp_path / 'test.npy'} has no {tmp_path / 'test.json'} beside it")
    ensemble = tmp_path / "ens.npy"
    assert run_cli(ensemble_tool, [str(saved / "test.npy"), str(saved / "test.npy"), "--save", str(ensemble)]) == 0
    record = json.loads(ensemble.with_suffix(".json").read_text())["provenance"]
    assert record["data"]["split"] == "test" and len(record["members"]) == 2


def test_a_query_against_an_index_of_a_replaced_checkpoint_is_refused(short_region_checkpoint, second_checkpoint,
                                                                      region_data, tmp_path, capsys):
    model = tmp_path / "model.pth"
    shutil.copy(short_region_checkpoint, model)
    index = tmp_path / "test.index"
    assert run_cli(retrieve, ["index", "--checkpoint", str(model), "--regions",
                              f"{region_data[0]}/f30k_precomp/test_ims.npy", "--out", str(index), "--device",
                              "cpu"]) == 0
    query = ["text", "--index", str(index), "--query", "a red circle", "--device", "cpu"]
    assert run_cli(retrieve, query) == 0
    moved = tmp_path / "moved.pth"
    shutil.move(model, moved)
    assert error_line(retrieve, query, capsys) == (
        f"index {index} was made with checkpoint {model}, which is not at {model} any more; give its new place with "
        "--checkpoint")
    assert run_cli(retrieve, query + ["--checkpoint", str(moved)]) == 0
    shutil.copy(second_checkpoint, model)            # another model in the index's file name
    message = error_line(retrieve, query, capsys)
    assert message.startswith(f"index {index} was made with another checkpoint than {model}: the file has changed "
                              "since (sha256 ")
    meta = json.loads((index / "index.json").read_text())
    (index / "index.json").write_text(json.dumps({**meta, "version": 2}))
    assert error_line(retrieve, query + ["--checkpoint", str(moved)], capsys) == (
        f"{index} is an index of format version 2; this code reads versions 3 and 4: rebuild it with tools/retrieve.py index")
    old = tmp_path / "old.index"
    torch.save({"format": "dimmatch-index", "version": 2}, old)
    assert error_line(retrieve, ["text", "--index", str(old), "--query", "a"], capsys) == (
        f"{old} is an index of format version 2 or older (one file); this code reads version 4 (a folder): rebuild "
        "it with tools/retrieve.py index")


def test_the_report_refuses_scores_of_another_checkpoint(saved, second_checkpoint, region_data, tmp_path, capsys):
    from tools.report import main
    message = error_line(main, ["--checkpoint", str(second_checkpoint), "--data_path", region_data[0], "--sims",
                                str(saved / "test.npy"), "--out", str(tmp_path / "page")], capsys)
    assert message.startswith(f"{saved / 'test.npy'} was made with another checkpoint than {second_checkpoint}")
    assert not (tmp_path / "page").exists()


def test_every_ensemble_member_is_checked_before_the_first_is_scored(short_region_checkpoint, tmp_path, region_data,
                                                                   capsys, caplog):
    missing = tmp_path / "gone.pth"
    with caplog.at_level(logging.INFO, logger="dimmatch"):
        message = error_line(TEST, ["--checkpoint", str(short_region_checkpoint), str(missing), "--data_path",
                                    region_data[0], "--workers", "0"], capsys)
    assert message == f"checkpoint {missing} does not exist"
    assert not [r for r in caplog.records if "encoded" in r.message]


@pytest.mark.parametrize("argv,expected", [
    (["index", "--checkpoint", "{t}/none.pth", "--regions", "{t}/r.npy", "--out", "{t}/x.index"],
     "checkpoint {t}/none.pth does not exist"),
    (["index", "--checkpoint", "{c}", "--regions", "{t}", "--out", "{t}/x.index"],
     "{t} is not a region feature file (.npy)"),
    (["index", "--checkpoint", "{c}", "--regions", "{t}/r.npy", "--out", "{t}/afile/x.index"],
     "--out {t}/afile/x.index: {t}/afile is a file, not a folder"),
    (["index", "--checkpoint", "{c}", "--regions", "{t}/r.npy", "--out", "{t}/x.txt"], "--out {t}/x.txt must end in .index"),
    (["text", "--index", "{t}/none.index", "--query", "a", "--top", "0"], "--top must be at least 1 (got 0)"),
    (["text", "--index", "{t}/none.index", "--query", "a", "--rerank_k", "0"], "--rerank_k must be at least 1 (got 0)"),
    (["text", "--index", "{t}/none.index", "--query", "a"], "index {t}/none.index does not exist (an index is the "
                                                             "folder"),
    (["text", "--index", "{t}", "--query", "a"], "{t} is not an index (no index.json; it holds other files)"),
    (["text", "--index", "{t}/afile", "--query", "a"], "{t}/afile is a file, not an index: an index is a folder"),
    (["image", "--index", "{t}/none.index", "--captions", "c.txt", "--item", "x"],
     "argument --item: invalid int value: 'x'"),
    (["bogus"], "argument command: invalid choice: 'bogus' (choose from 'index', 'text', 'image', 'export')"),
])
def test_retrieve_mistakes_are_one_line(short_region_checkpoint, tmp_path, capsys, argv, expected):
    (tmp_path / "afile").write_text("x")
    line = error_line(retrieve, [a.format(t=tmp_path, c=short_region_checkpoint) for a in argv], capsys)
    assert line.startswith(expected.format(t=tmp_path, c=short_region_checkpoint))


@pytest.mark.parametrize("argv,expected", [
    (["{t}/a.npy", "--weights", "1", "2"], "--weights has 2 values for 1 matrices; give one per matrix"),
    (["{t}/a.npy", "--save", "{t}/afile/e.npy"], "--save {t}/afile/e.npy: {t}/afile is a file, not a folder"),
    (["{t}"], "{t} is a folder, not a saved score matrix (.npy)"),
    (["{t}/afile", "--unverified"], "{t}/afile is not a .npy file (it lacks NumPy's header)"),
    (["--coco_5fold"], "the following arguments are required: matrices"),
])
def test_ensemble_tool_mistakes_are_one_line(tmp_path, capsys, argv, expected):
    np.save(tmp_path / "a.npy", np.zeros((2, 10), np.float32))
    (tmp_path / "afile").write_text("x")
    assert error_line(ensemble_tool, [a.format(t=tmp_path) for a in argv], capsys).startswith(
        expected.format(t=tmp_path))


@pytest.mark.parametrize("argv,expected", [
    (["--queries", "0"], "--queries must be at least 1 (got 0)"),
    (["--out", "{t}/afile"], "--out {t}/afile is a file; give a folder"),
    (["--sims", "{t}/none.npy"], "{t}/none.npy does not exist"),
    (["--split", "nope"], "{d}/f30k_precomp/nope_caps.txt is missing"),
])
def test_report_mistakes_are_one_line(short_region_checkpoint, region_data, tmp_path, capsys, argv, expected):
    from tools.report import main
    (tmp_path / "afile").write_text("x")
    base = ["--checkpoint", str(short_region_checkpoint), "--data_path", region_data[0], "--out", str(tmp_path / "o")]
    line = error_line(main, base + [a.format(t=tmp_path) for a in argv], capsys)
    assert line.startswith(expected.format(t=tmp_path, d=region_data[0]))
    assert not (tmp_path / "o").exists()


def test_convert_reads_what_test_py_reads(tmp_path, capsys):
    from tools.convert_checkpoint import main
    assert error_line(main, [str(tmp_path / "none.tar"), str(tmp_path / "o.pth")], capsys) == \
        f"checkpoint {tmp_path / 'none.tar'} does not exist"
    assert error_line(main, [str(tmp_path), str(tmp_path / "o.pth")], capsys) == \
        f"checkpoint {tmp_path} is a folder without config.json: give a model folder written by train.py or " \
        "tools/convert_checkpoint.py --format hub, or a checkpoint file"
    assert error_line(main, [str(tmp_path / "x"), str(tmp_path / "o.tar")], capsys) == \
        f"output {tmp_path / 'o.tar'} must end in .pth (--format hub writes a model folder)"
