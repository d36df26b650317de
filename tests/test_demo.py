"""The offline demo: deterministic generators in the real formats, and a short run that learns."""

import filecmp
import json
import os

import pytest
import torch

from conftest import error_line, make_config
from checkpoints.loading import read_payload
from datasets.transforms import ClipPreprocess
from datasets.captions import tokenizer_from_snapshot
from datasets.karpathy import ImageFileSet, load_karpathy_split
from datasets.precomp import PrecompSplit
from demo.__main__ import chance_rsum, main as demo
from demo.data import write_image_dataset, write_region_dataset
from evaluation.protocol import evaluate_split
from pairs import build_model, load_eval_split, pair_of


def same_tree(a, b, ignore=None):
    comparison = filecmp.dircmp(a, b, ignore=ignore)
    return not comparison.diff_files and not comparison.left_only and not comparison.right_only and \
        all(same_tree(os.path.join(a, d), os.path.join(b, d), ignore) for d in comparison.common_dirs)


def relative_record(root):
    """The region record of a demo test split, its absolute image paths made relative to `root`."""
    with open(os.path.join(root, "f30k_precomp", "test_ims.json"), encoding="utf-8") as handle:
        record = json.load(handle)
    for image in record["images"]:
        image["path"] = os.path.relpath(image["path"], root)
    return record


def test_region_generator_is_deterministic_and_loads(tmp_path):
    sizes = {"train": 20, "dev": 5, "test": 5}
    first = write_region_dataset(str(tmp_path / "a"), sizes, regions=6, dim=32, seed=4)
    assert first == write_region_dataset(str(tmp_path / "b"), sizes, regions=6, dim=32, seed=4)
    assert same_tree(tmp_path / "a", tmp_path / "b", ignore=["test_ims.json"])   # it records absolute paths
    assert relative_record(tmp_path / "a") == relative_record(tmp_path / "b")
    assert first != write_region_dataset(str(tmp_path / "c"), sizes, regions=6, dim=32, seed=5)
    split = PrecompSplit(str(tmp_path / "a"), "f30k_precomp", "dev", img_dim=32)
    assert split.images.shape == (5, 6, 32) and split.image_divisor == 5 and len(split.captions) == 25
    assert len(set(split.captions[:5])) == 5          # five different sentences per image


def test_image_generator_is_deterministic_and_loads(tmp_path):
    sizes = {"train": 6, "val": 2, "test": 2}
    write_image_dataset(str(tmp_path / "a"), sizes, image_size=32, seed=1)
    write_image_dataset(str(tmp_path / "b"), sizes, image_size=32, seed=1)
    assert same_tree(tmp_path / "a", tmp_path / "b")
    entries = load_karpathy_split("f30k", str(tmp_path / "a"), str(tmp_path / "a" / "images"), "test")
    assert len(entries) == 2 and all(len(captions) == 5 for _, captions in entries)
    assert ImageFileSet([path for path, _ in entries], ClipPreprocess(32))[0]["image"].shape == (3, 32, 32)


def test_chance_level():
    # about k/N for both directions: 2 * (1 + 5 + 10) / 1000 * 100
    assert chance_rsum(1000) == pytest.approx(3.2, rel=0.01)


@pytest.mark.slow
@pytest.mark.parametrize("system", ["xdim", "clip"])
def test_short_demo_beats_a_random_model(tmp_path, system):
    summary = demo(["--system", system, "--epochs", "1", "--train_images", "320", "--test_images", "20",
                    "--output", str(tmp_path)])
    payload, _ = read_payload(summary["checkpoint"])
    cfg = make_config(**payload.config)
    torch.manual_seed(123)
    untrained = build_model(cfg, backbone_config=payload.backbone_config)
    encoder = pair_of(cfg).caption_encoder(cfg, tokenizer_from_snapshot(payload.tokenizer),
                                  untrained.text_tokens()["positions"])
    random_rsum = evaluate_split(untrained, load_eval_split(cfg, "test"), encoder, torch.device("cpu"), workers=0,
                                 progress=False)["metrics"]["rsum"]
    assert summary["rsum"] > random_rsum + 50, (summary["rsum"], random_rsum)
    assert summary["rsum"] > summary["chance_rsum"] + 50


def test_make_demo_data_checks_its_options_and_keeps_what_is_there(tmp_path, capsys):
    from tools.make_demo_data import main
    assert error_line(main, [str(tmp_path / "d"), "--train_images", "-5"], capsys) == \
        "--train_images must be at least 1 (got -5)"
    (tmp_path / "afile").write_text("x")
    assert error_line(main, [str(tmp_path / "afile")], capsys) == f"--output {tmp_path / 'afile'} is a file; give a folder"
    assert error_line(main, [str(tmp_path / "d"), "--train_image", "10"], capsys).startswith("unrecognized arguments")
    (tmp_path / "d" / "regions").mkdir(parents=True)
    assert error_line(main, [str(tmp_path / "d"), "--train_images", "10", "--test_images", "5"], capsys) == (
        f"output {tmp_path / 'd'} holds regions, which no command of ours wrote (no .dimmatch-manifest.json records "
        "it); tools/make_demo_data.py never replaces it: choose another folder")
    assert not os.listdir(tmp_path / "d" / "regions")
