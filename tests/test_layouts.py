"""Data layouts are registered specs apart from the encoder pairs: the registered ones, what a pair
reads, and a toy layout with 3 captions per image, registered here and nowhere in the package,
that evaluates a region model with test.py without touching any other file."""

import json
import os

import numpy as np
import pytest

from conftest import REGION_DIM, error_line, run_cli
from cli.commands import evaluate, train
from config import catalogue
from config.schema import LOCATION, Option
from datasets.layouts import IMAGES, LAYOUTS, REGIONS, DataLayout, EvalSplit
from datasets.precomp import read_captions
from evaluation.metrics import i2t_ranks, retrieval_metrics, t2i_ranks
from pairs import PAIRS, layout_for
from test_registry import register

TEST = (lambda argv: evaluate(argv, "test"))


def test_the_registered_layouts_and_what_each_pair_reads():
    assert {name: layout.images for name, layout in LAYOUTS.items()} == \
        {"precomp": REGIONS, "karpathy": IMAGES, "coco": IMAGES}
    assert set(catalogue.LAYOUTS) == set(LAYOUTS)
    assert all(layout.captions_per_image == 5 for layout in LAYOUTS.values())
    assert layout_for(PAIRS["region_bert"], {"layout": None}).name == "precomp"
    assert layout_for(PAIRS["clip"], {"layout": None, "dataset": "f30k"}).name == "karpathy"
    assert layout_for(PAIRS["clip"], {"layout": None, "dataset": "coco"}).name == "coco"


def test_a_pair_refuses_a_layout_that_delivers_other_images():
    from errors import ConfigError
    with pytest.raises(ConfigError, match="--layout karpathy delivers image files, but the region_bert encoders "
                                          "read region features"):
        layout_for(PAIRS["region_bert"], {"layout": "karpathy"})
    with pytest.raises(ConfigError, match="give the data of the clip encoders"):
        layout_for(PAIRS["clip"], {"layout": None, "dataset": None})


def test_metrics_with_three_captions_per_image_by_hand():
    """2 images, 3 captions each. Image 0's best caption (col 1, 0.9) is beaten by no other image's
    caption: rank 0; image 1's best (col 5, 0.6) is beaten by col 1 (0.7): rank 1. Caption j's own
    image must score it above the other image: columns 0, 1, 2 are image 0's; column 2 scores 0.1
    under image 0 and 0.3 under image 1, so its rank is 1."""
    sims = np.array([[0.5, 0.9, 0.1, 0.0, 0.2, 0.4],
                     [0.2, 0.7, 0.3, 0.5, 0.1, 0.6]])
    assert i2t_ranks(sims, 3).tolist() == [0, 1]
    assert t2i_ranks(sims, 3).tolist() == [0, 0, 1, 0, 1, 0]
    metrics = retrieval_metrics(sims, 3)
    assert metrics["i2t"]["r1"] == 50.0 and metrics["t2i"]["r1"] == pytest.approx(100 * 4 / 6)
    with pytest.raises(Exception, match=r"not \(N images x 5N captions\)"):
        retrieval_metrics(sims)


def three_caption_layout() -> DataLayout:
    """<toy_path>/{split}_feats.npy (images x regions x dim), {split}_caps.txt with 3 captions an image."""

    def eval_split(cfg, split, max_images, transform):
        rows = np.load(os.path.join(cfg.toy_path, f"{split}_feats.npy"), mmap_mode="r")
        captions = read_captions(os.path.join(cfg.toy_path, f"{split}_caps.txt"))
        return EvalSplit(FeatureRows(rows), captions, 3, f"{cfg.toy_path} {split}")

    return DataLayout(
        name="toy3", summary="region rows with 3 captions each (test only)", images=REGIONS,
        options=(Option("toy_path", str, None, "folder of {split}_feats.npy and {split}_caps.txt", LOCATION,
                        evaluation=True),),
        required=("toy_path",), captions_per_image=3, resolve=lambda values, given: None,
        train_dataset=None, eval_split=eval_split,
        input_files=lambda cfg, split: [os.path.join(cfg.toy_path, f"{split}_{name}")
                                        for name in ("feats.npy", "caps.txt")])


class FeatureRows:
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return self.rows.shape[0]

    def __getitem__(self, index):
        import torch
        return {"image": torch.from_numpy(np.array(self.rows[index], dtype=np.float32)), "index": index}

    def identity(self):
        return {"kind": "toy3", "images": len(self)}


def region_run_with_the_toy_layout(monkeypatch, out, region_data, tiny_bert, steps: int):
    """A short region run (its data read through precomp), with the toy layout registered."""
    register(monkeypatch, LAYOUTS, catalogue.LAYOUTS, three_caption_layout())
    assert run_cli(train, ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
                           "--img_dim", str(REGION_DIM), "--embed_size", "16", "--batch_size", "16",
                           "--max_steps", str(steps), "--workers", "0", "--device", "cpu", "--output_dir", str(out)]) == 0


def test_a_registered_layout_with_three_captions_per_image_evaluates(monkeypatch, tmp_path, region_data, tiny_bert):
    """The same model scores the same image and caption alike under either layout: the toy
    layout's matrix is the 5-caption matrix's columns 5i, 5i+1, 5i+2, and its metrics are those
    of 3 captions per image."""
    out = tmp_path / "run"
    region_run_with_the_toy_layout(monkeypatch, out, region_data, tiny_bert, steps=4)
    folder = tmp_path / "toy3"
    folder.mkdir()
    source = os.path.join(region_data[0], "f30k_precomp")
    np.save(folder / "test_feats.npy", np.load(os.path.join(source, "test_ims.npy")))
    captions = read_captions(os.path.join(source, "test_caps.txt"))
    kept = [caption for number, caption in enumerate(captions) if number % 5 < 3]
    (folder / "test_caps.txt").write_text("\n".join(kept) + "\n", encoding="utf-8")

    five, three = tmp_path / "five.npy", tmp_path / "three.npy"
    checkpoint = str(out / "checkpoint_last.pth")
    assert run_cli(TEST, ["--checkpoint", checkpoint, "--workers", "0", "--save_sims", str(five)]) == 0
    assert run_cli(TEST, ["--checkpoint", checkpoint, "--workers", "0", "--layout", "toy3", "--toy_path",
                          str(folder), "--save_sims", str(three)]) == 0
    five_sims, three_sims = np.load(five), np.load(three)
    assert three_sims.shape == (10, 30)
    columns = [column for column in range(50) if column % 5 < 3]
    np.testing.assert_allclose(three_sims, five_sims[:, columns], rtol=1e-5, atol=1e-6)
    saved = json.loads((tmp_path / "three.json").read_text())
    assert saved["metrics"]["rsum"] == pytest.approx(retrieval_metrics(three_sims, 3)["rsum"])
    assert saved["provenance"]["data"]["captions"] == 30


def test_a_layout_without_its_data_options_is_one_line(monkeypatch, tmp_path, region_data, tiny_bert, capsys):
    out = tmp_path / "run"
    region_run_with_the_toy_layout(monkeypatch, out, region_data, tiny_bert, steps=1)
    line = error_line(TEST, ["--checkpoint", str(out / "checkpoint_last.pth"), "--layout", "toy3"], capsys)
    assert line.startswith("give --toy_path for checkpoint") and "toy3 layout" in line


def test_one_caption_per_image_is_not_read_as_rows_per_caption(tmp_path):
    """As many rows as captions means each image's row repeated for its 5 captions (SCAN's COCO files);
    one caption per image has that shape too, and is refused rather than read as every fifth image."""
    from types import SimpleNamespace
    from errors import DataError
    from datasets.layouts import PRECOMP
    folder = tmp_path / "f30k_precomp"
    folder.mkdir()
    distinct = np.random.default_rng(0).random((10, 2, 4)).astype(np.float32)
    (folder / "test_caps.txt").write_text("".join(f"caption {i}\n" for i in range(10)))
    cfg = SimpleNamespace(data_path=str(tmp_path), data_name="f30k_precomp", img_dim=4)
    np.save(folder / "test_ims.npy", distinct)
    with pytest.raises(DataError, match=r"has one row per caption of .*test_caps.txt, but rows 0-4 differ"):
        PRECOMP.eval_split(cfg, "test", None, None)
    np.save(folder / "test_ims.npy", np.repeat(distinct[:2], 5, axis=0))
    split = PRECOMP.eval_split(cfg, "test", None, None)
    assert len(split.images) == 2 and split.captions_per_image == 5


def test_a_run_records_its_layout_and_refuses_another_layouts_options(tmp_path, region_data, tiny_bert, capsys):
    base = ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert, "--img_dim",
            str(REGION_DIM), "--output_dir", str(tmp_path / "run")]
    assert run_cli(train, base + ["--print_config"]) == 0
    assert json.loads(capsys.readouterr().out)["layout"] == "precomp"
    assert error_line(train, base + ["--dataset", "f30k"], capsys) == (
        "--dataset is a data option of the karpathy layout, but this run reads the precomp layout "
        "(--data_path/--data_name); drop --dataset, or give --layout karpathy with encoders that read it")
    assert not (tmp_path / "run").exists()


def test_testall_of_flickr30k_regions_says_it_is_cocos_split():
    from types import SimpleNamespace
    from errors import DataError
    from datasets.layouts import PRECOMP
    with pytest.raises(DataError, match="testall is COCO's 5K test split; f30k_precomp has none: evaluate it with "
                                        "test.py"):
        PRECOMP.eval_split(SimpleNamespace(data_path="x", data_name="f30k_precomp", img_dim=4), "testall", None, None)
