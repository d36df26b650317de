"""Every option, path and input file checked before work, used run folders kept, what a run records,
and one clear line per bad input. Each refusal is asserted to leave the output folder exactly as it
was. (Self-contained checkpoints and their tokenizers: test_tokenizers.py.)"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REGION_DIM, error_line, run_cli, train_args, tree_state
from datasets.transforms import ClipPreprocess
from cli.commands import evaluate, train
from demo.data import write_region_dataset
from demo.tiny_models import write_tiny_bert
from errors import DataError

TEST = (lambda argv: evaluate(argv, "test"))
TESTALL = (lambda argv: evaluate(argv, "testall", coco_testall=True))


# ----------------------------------------------------------------------------- checks before work

@pytest.mark.parametrize("extra,expected", [
    (["--workers", "-1"], "--workers must be at least 0 (got -1)"),
    (["--log_every", "0"], "--log_every must be at least 1 (got 0)"),
    (["--embed_size", "0"], "--embed_size must be at least 1 (got 0)"),
    (["--region_drop", "1"], "--region_drop must be in [0, 1) (got 1.0)"),
    (["--max_steps", "-5"], "--max_steps must be at least 0 (got -5)"),
    (["--eval_batch_size", "0"], "--eval_batch_size must be at least 1 (got 0)"),
    (["--learning_rate", "nan"], "--learning_rate must be a finite number (got nan)"),
    (["--learning_rate", "inf"], "--learning_rate must be a finite number (got inf)"),
    (["--lr", "1"], "unrecognized arguments: --lr 1"),
    (["--tf32", "on"], "--tf32 on needs CUDA (TF32 is a mode of NVIDIA GPUs; the CPU computes in fp32)"),
    (["--output_dir", ""], "--output_dir must name a folder"),
    (["--eval_mem_gb", "0"], "--eval_mem_gb must be greater than 0 (got 0.0)"),
    (["--word_aug", "1.5"], "--word_aug must be in [0, 1] (got 1.5)"),
    (["--val_split", "test"], "--val_split test: the model would be selected on the test set, which makes the "
                              "reported test numbers optimistic; validate on dev (Flickr30K images: val)"),
    (["--resume", "auto", "--overwrite"], "--resume continues a run and --overwrite replaces it; give one of them"),
])
def test_option_values_are_refused_before_anything(tmp_path, region_data, tiny_bert, capsys, extra, expected):
    out = tmp_path / "out"
    assert error_line(train, train_args(region_data[0], tiny_bert, out, *extra), capsys) == expected
    assert not out.exists()


def test_a_used_run_folder_needs_resume_or_overwrite(trained, tmp_path, region_data, tiny_bert, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    before = tree_state(out)
    assert error_line(train, train_args(region_data[0], tiny_bert, out), capsys) == (
        f"--output_dir {out} already holds a run; continue it with --resume auto, replace it with --overwrite, "
        "or choose another folder")
    assert tree_state(out) == before
    (out / "notes.txt").write_text("mine")
    assert run_cli(train, train_args(region_data[0], tiny_bert, out, "--overwrite", "--max_steps", "2")) == 0
    assert torch.load(out / "checkpoint_last.pth", weights_only=True)["progress"]["global_step"] == 2
    assert not (out / "model_best").exists() and (out / "notes.txt").read_text() == "mine"


def test_a_failed_resume_changes_nothing(trained, tmp_path, region_data, tiny_bert, capsys):
    """The validation split is checked at the start: a missing dev file fails before config.json,
    train.log or any checkpoint is touched."""
    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    data = tmp_path / "data"
    shutil.copytree(region_data[0], data)
    os.remove(data / "f30k_precomp" / "dev_caps.txt")
    before = tree_state(out)
    message = error_line(train, train_args(data, tiny_bert, out, "--resume", "auto"), capsys)
    assert message == (f"{data / 'f30k_precomp' / 'dev_caps.txt'} is missing (split 'dev' needs dev_ims.npy and "
                       "dev_caps.txt)")
    assert tree_state(out) == before


@pytest.mark.parametrize("target,expected", [
    ("sims.txt", "--save_sims {p} must end in .npy"),
    ("folder.npy", "--save_sims {p} is a folder; give a file name ending in .npy"),
    ("afile/sims.npy", "--save_sims {p}: {t}/afile is a file, not a folder"),
])
def test_save_sims_is_checked_before_scoring(trained, tmp_path, capsys, target, expected):
    out, data, _ = trained
    (tmp_path / "folder.npy").mkdir()
    (tmp_path / "afile").write_text("")
    path = tmp_path / target
    message = error_line(TEST, ["--checkpoint", str(out / "model_best"), "--data_path", data, "--workers", "0",
                                "--save_sims", str(path)], capsys)
    assert message == expected.format(p=path, t=tmp_path)


def test_output_dir_that_is_a_file(tmp_path, region_data, tiny_bert, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert error_line(train, train_args(region_data[0], tiny_bert, target), capsys) == \
        f"--output_dir {target} is a file; give a folder for the run"


def test_testall_fold_sizes_are_checked_before_encoding(trained, tmp_path, capsys):
    out = trained[0]
    data = tmp_path / "data"
    write_region_dataset(str(data), {"test": 12}, regions=8, dim=REGION_DIM, seed=3)
    message = error_line(TESTALL, ["--checkpoint", str(out / "model_best"), "--data_path", str(data),
                                   "--split", "test", "--workers", "0"], capsys)
    assert message == (f"{data / 'f30k_precomp' / 'test_caps.txt'} has 12 images, which do not split into 5 equal "
                       "folds (COCO testall has 5,000); use test.py for a single split")


def test_folders_where_files_are_expected(trained, tmp_path, region_data, tiny_bert, capsys):
    out, data, _ = trained
    assert error_line(TEST, ["--checkpoint", str(out), "--data_path", data], capsys) == \
        f"checkpoint {out} is a training run's folder; give the checkpoint in it ({out / 'model_best'})"
    copy = tmp_path / "data"
    shutil.copytree(region_data[0], copy)
    caps = copy / "f30k_precomp" / "train_caps.txt"
    os.remove(caps)
    caps.mkdir()
    assert error_line(train, train_args(copy, tiny_bert, tmp_path / "o"), capsys) == \
        f"{caps} is a folder; split 'train' needs the files train_ims.npy and train_caps.txt"
    assert error_line(train, train_args(caps.parent / "train_ims.npy", tiny_bert, tmp_path / "o"), capsys) == \
        f"--data_path {caps.parent / 'train_ims.npy'} is a file; give the folder that holds f30k_precomp/"
    assert error_line(train, train_args(region_data[0], os.path.join(tiny_bert, "vocab.txt"), tmp_path / "o"),
                      capsys) == (f"--bert_path {os.path.join(tiny_bert, 'vocab.txt')} is a file; give the folder "
                                  "that holds config.json and the tokenizer files (as written by save_pretrained)")


# ----------------------------------------------------------------------------- inputs

def test_captions_that_are_not_utf8(tmp_path, region_data, tiny_bert, capsys):
    data = tmp_path / "data"
    shutil.copytree(region_data[0], data)
    caps = data / "f30k_precomp" / "train_caps.txt"
    lines = caps.read_bytes().split(b"\n")
    lines[3] = "un caf\u00e9 au lait".encode("latin-1")
    caps.write_bytes(b"\n".join(lines))
    assert error_line(train, train_args(data, tiny_bert, tmp_path / "out"), capsys) == \
        f"{caps}:4 is not UTF-8 text (byte 0xe9); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8"
    assert not (tmp_path / "out").exists()


def test_a_byte_order_mark_is_not_part_of_the_first_caption(tmp_path):
    from datasets.precomp import read_captions
    path = tmp_path / "caps.txt"
    path.write_bytes("\ufeffa dog runs\r\na cat\u2028sleeps\n".encode("utf-8"))
    assert read_captions(str(path)) == ["a dog runs", "a cat\u2028sleeps"]


def test_a_binary_or_utf16_captions_file_says_what_it_is(tmp_path):
    """A NumPy array or anything holding a NUL byte is not text (no advice to convert it); UTF-16
    with its byte-order mark is text in another encoding."""
    from datasets.precomp import read_captions
    from errors import DataError
    np.save(tmp_path / "X.npy", np.zeros(3))
    (tmp_path / "utf16.txt").write_text("a dog runs\n", encoding="utf-16")
    (tmp_path / "bare16.txt").write_bytes("a dog\n".encode("utf-16-le"))
    for name, expected in [
        ("X.npy", "{} is a NumPy array file (.npy), not a text file of captions (one caption a line)"),
        ("utf16.txt", "{} is UTF-16 text; convert the file to UTF-8, e.g. iconv -f utf-16 -t utf-8"),
        ("bare16.txt", "{}:1 holds a NUL byte: it is a binary file (or UTF-16 text without its byte-order mark), not "
                       "a text file of captions (one caption a line)"),
    ]:
        with pytest.raises(DataError) as error:
            read_captions(str(tmp_path / name))
        assert str(error.value) == expected.format(tmp_path / name)


def test_captions_longer_than_the_text_encoder_are_cut_and_said_once(trained, tmp_path, caplog):
    out, data, _ = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    caps = copy / "f30k_precomp" / "test_caps.txt"
    lines = caps.read_text().splitlines()
    lines[0] = lines[1] = " ".join(["dog"] * 300)  # the tiny BERT has 128 positions
    caps.write_text("\n".join(lines) + "\n")
    result = evaluate(["--checkpoint", str(out / "model_best"), "--data_path", str(copy), "--workers", "0"])
    assert 0 <= result["report"]["rsum"] <= 600
    notes = [r.message for r in caplog.records if "longer than" in r.message]
    assert len(notes) == 1 and "longer than the text encoder's 128 positions are cut to 128 tokens ([CLS] and " \
        "[SEP] kept); the released code does not cut" in notes[0]


def test_images_too_large_to_decode(tmp_path, monkeypatch):
    from datasets.karpathy import ImageFileSet, KarpathyTrainDataset
    big, small = tmp_path / "big.png", tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(big)
    Image.new("RGB", (4, 4)).save(small)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 100 x 100 is more than twice this
    with pytest.raises(DataError, match=r"^evaluation image .*big.png is too large to decode safely \(Image size"):
        ImageFileSet([str(big)], ClipPreprocess(8))[0]
    train_set = KarpathyTrainDataset([(str(big), ["a"]), (str(small), ["b"])], lambda caption: [0],
                                     transform=ClipPreprocess(8))
    assert train_set[0]["skipped"] == 1


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    from datasets.transforms import clip_preprocess
    grey = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint16)
    Image.fromarray(grey * 257).save(tmp_path / "grey16.png")
    opened = Image.open(tmp_path / "grey16.png")
    assert opened.mode == "I;16"
    eight_bit = clip_preprocess(Image.fromarray(grey.astype(np.uint8)), 32)
    assert torch.equal(clip_preprocess(opened, 32), eight_bit)
    floats = Image.fromarray(grey.astype(np.float32) / 255.0, mode="F")
    assert torch.allclose(clip_preprocess(floats, 32), eight_bit, atol=1e-6)


def write_coco_annotations(folder, images):
    os.makedirs(folder / "val2014", exist_ok=True)
    entries = []
    for number, name in enumerate(images):
        Image.new("RGB", (8, 8)).save(folder / "val2014" / name)
        entries.append({"file_name": name, "sentences": [{"raw": f"Caption {number} {k}."} for k in range(5)]})
    for split in ("train", "dev", "testall"):
        (folder / f"{split}_coco.json").write_text(json.dumps({"images": entries}))


def test_a_single_coco_annotation_file_keeps_its_split(tmp_path):
    from datasets.karpathy import load_karpathy_split
    write_coco_annotations(tmp_path, ["a.jpg", "b.jpg"])
    testall = tmp_path / "testall_coco.json"
    assert len(load_karpathy_split("coco", str(testall), str(tmp_path), "testall")) == 2
    with pytest.raises(DataError) as error:
        load_karpathy_split("coco", str(testall), str(tmp_path), "dev")
    assert str(error.value) == (f"--ann_path {testall} is the COCO annotation file of split 'testall', but split "
                                "'dev' needs dev_coco.json; give the folder holding {train,dev,testall}_coco.json")
    renamed = tmp_path / "captions.json"
    shutil.copy(testall, renamed)
    with pytest.raises(DataError, match="is the COCO annotation file of an unknown split"):
        load_karpathy_split("coco", str(renamed), str(tmp_path), "testall")
    assert len(load_karpathy_split("coco", str(tmp_path), str(tmp_path), "dev")) == 2


# ----------------------------------------------------------------------------- what a run records

def test_train_log_records_progress_and_tensorboard_survives_resume(tmp_path, region_data, tiny_bert):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    args = train_args(region_data[0], tiny_bert, out, "--num_epochs", "2", "--log_every", "10")
    assert run_cli(train, args + ["--max_steps", "30"]) == 0          # stops right after epoch 0's validation
    assert run_cli(train, args + ["--resume", "auto", "--max_steps", "0"]) == 0   # the limit lifted
    log = (out / "train.log").read_text()
    progress = [line for line in log.splitlines() if "pairs/s" in line]
    assert len(progress) == 6 and all("loss" in line and "lr text_linear" in line and "ETA" in line
                                      for line in progress)
    assert "resolved config" in log and log.count("resumed from") == 1
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("val/rsum")] == [30, 60]
    assert [event.step for event in events.Scalars("train/loss")] == [10, 20, 30, 40, 50, 60]


def test_a_released_checkpoint_checks_its_tokenizer_before_encoding(tmp_path, region_data, tiny_bert, capsys):
    from test_released import released_region_image, released_region_text, released_xdim_head, save_region_release
    path = tmp_path / "checkpoint_24.pth_528.2.tar"
    save_region_release(path, released_region_image(), released_region_text(tiny_bert), released_xdim_head())
    short = tmp_path / "short_vocab_bert"
    shutil.copytree(tiny_bert, short)
    vocab = (short / "vocab.txt").read_text(encoding="utf-8").split()
    (short / "vocab.txt").write_text("\n".join(vocab[:-3]) + "\n", encoding="utf-8")
    message = error_line(TEST, ["--checkpoint", str(path), "--data_path", region_data[0], "--workers", "0",
                                "--bert_path", str(short)], capsys)
    assert message == (f"the tokenizer of --bert_path {short} has {len(vocab) - 3} tokens but the model's embedding "
                       f"table has {len(vocab)} rows: it is not the tokenizer this model was trained with")


def test_a_failing_validation_keeps_the_trained_steps(tmp_path, region_data, tiny_bert, monkeypatch, capsys):
    from training.validation import Validator

    def broken(self, state):
        raise DataError("dev images vanished")
    monkeypatch.setattr(Validator, "__call__", broken)
    out = tmp_path / "run"
    assert error_line(train, train_args(region_data[0], tiny_bert, out), capsys) == "dev images vanished"
    saved = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert saved["progress"]["global_step"] == saved["progress"]["steps_per_epoch"] == 30


def test_annotation_files_that_are_not_utf8(tmp_path):
    from datasets.karpathy import load_karpathy_split
    (tmp_path / "dataset_flickr30k.json").write_bytes(
        b'{"images": [{"filename": "a.jpg", "split": "test",\n "sentences": [{"raw": "caf\xe9"}]}]}')
    with pytest.raises(DataError) as error:
        load_karpathy_split("f30k", str(tmp_path), str(tmp_path), "test")
    assert str(error.value) == (f"{tmp_path / 'dataset_flickr30k.json'}:2 is not UTF-8 text (byte 0xe9); convert the "
                                "file to UTF-8, e.g. iconv -f latin1 -t utf-8")
