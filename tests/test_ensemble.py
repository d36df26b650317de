"""Ensembles: test.py / testall.py with several checkpoints, and tools/ensemble.py on saved matrices."""

import json
import os

import numpy as np
import pytest

from conftest import REGION_DIM, error_line, run_cli, train_short_region
from cli.commands import evaluate
from evaluation.metrics import retrieval_metrics

TEST = (lambda argv: evaluate(argv, "test"))


def ensemble_tool(argv):
    from tools.ensemble import main
    return main(argv)


@pytest.fixture(scope="module")
def region_model(tmp_path_factory, region_data, tiny_bert):
    return train_short_region(tmp_path_factory.mktemp("ens_region") / "run", region_data, tiny_bert,
                              "--sim_head", "esl_a", "--max_steps", "6")


def scores(checkpoints, tmp_path, name, *extra):
    path = tmp_path / f"{name}.npy"
    assert run_cli(TEST, ["--checkpoint", *map(str, checkpoints), "--workers", "0", "--save_sims", str(path),
                          *extra]) == 0
    return np.load(path), json.loads(path.with_suffix(".json").read_text())


def test_an_ensemble_of_a_model_with_itself_is_the_model(region_model, region_data, tmp_path, capsys):
    single, single_json = scores([region_model], tmp_path, "single", "--data_path", region_data[0])
    double, double_json = scores([region_model, region_model], tmp_path, "double", "--data_path", region_data[0],
                                 "--weights", "3", "1")
    assert np.allclose(double, single, atol=1e-6)
    assert double_json["metrics"] == single_json["metrics"]
    assert [member["weight"] for member in double_json["members"]] == [0.75, 0.25]
    assert "ensemble of 2 (weights 0.75 0.25)" in capsys.readouterr().out


def write_aligned_regions(folder, captions, seed=0):
    """f30k_precomp test files whose captions are those of the raw-image test split, in its order."""
    target = folder / "f30k_precomp"
    target.mkdir(parents=True)
    regions = np.random.default_rng(seed).normal(size=(len(captions) // 5, 8, REGION_DIM)).astype(np.float32)
    np.save(target / "test_ims.npy", regions)
    (target / "test_caps.txt").write_text("\n".join(captions) + "\n")


def test_a_region_model_and_a_clip_model_in_one_ensemble(region_model, short_clip_checkpoint, image_data, tmp_path):
    from datasets.karpathy import load_karpathy_split
    root, images, _ = image_data
    entries = load_karpathy_split("f30k", root, images, "test")
    write_aligned_regions(tmp_path / "regions", [caption.upper() + " ." for _, caps in entries for caption in caps])
    data = ["--data_path", str(tmp_path / "regions"), "--data_name", "f30k_precomp", "--dataset", "f30k",
            "--image_root", images, "--ann_path", root]
    region, _ = scores([region_model], tmp_path, "region", *data)
    clip, _ = scores([short_clip_checkpoint], tmp_path, "clip", *data)
    both, saved = scores([region_model, short_clip_checkpoint], tmp_path, "both", *data)
    assert np.allclose(both, (region + clip) / 2, atol=1e-6)
    assert saved["metrics"] == retrieval_metrics((region + clip) / 2)


def test_members_on_differently_ordered_data_are_refused(region_model, short_clip_checkpoint, image_data, tmp_path,
                                                         capsys):
    from datasets.karpathy import load_karpathy_split
    root, images, _ = image_data
    captions = [caption for _, caps in load_karpathy_split("f30k", root, images, "test") for caption in caps]
    captions[5:10], captions[10:15] = captions[10:15], captions[5:10]
    write_aligned_regions(tmp_path / "regions", captions)
    message = error_line(TEST, ["--checkpoint", str(region_model), str(short_clip_checkpoint), "--workers", "0",
                                "--data_path", str(tmp_path / "regions"), "--dataset", "f30k",
                                "--image_root", images, "--ann_path", root], capsys)
    assert message.startswith(f"caption 5 of member 2 ({short_clip_checkpoint}) (") and message.endswith(
        f"is not caption 5 of member 1 ({region_model}) ({captions[5][:40]!r}): they are not evaluated on the same "
        "items in the same order")


def test_weights_must_match_the_checkpoints(region_model, region_data, capsys):
    assert error_line(TEST, ["--checkpoint", str(region_model), str(region_model), "--weights", "1",
                             "--data_path", region_data[0]], capsys) == \
        "--weights has 1 values for 2 checkpoints; give one per checkpoint"
    assert error_line(TEST, ["--checkpoint", str(region_model), str(region_model), "--weights", "-1", "1",
                             "--data_path", region_data[0]], capsys) == "--weights must be greater than 0 (got -1.0)"
    assert error_line(TEST, ["--checkpoint", str(region_model), "--weights", "2", "--data_path", region_data[0]],
                      capsys) == ("--weights weighs the members of an ensemble; give two checkpoints or more, or no "
                                  "--weights")


def half_right(n_images, right, seed):
    """Scores that rank each image's own captions first (and the image first for them) for the
    images in `right` only, by a margin larger than any noise."""
    sims = np.random.default_rng(seed).uniform(0, 1, size=(n_images, 5 * n_images)).astype(np.float32)
    for image in right:
        sims[image, 5 * image: 5 * image + 5] += 10
    return sims


def test_the_tool_reports_the_metrics_of_the_weighted_mean(tmp_path, capsys):
    first, second = half_right(10, range(5), 0), half_right(10, range(5, 10), 1)
    np.save(tmp_path / "a.npy", first)
    np.save(tmp_path / "b.npy", second)
    report = ensemble_tool([str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--unverified"])
    assert report["i2t"]["r1"] == report["t2i"]["r1"] == 100.0      # each image is right in one member
    assert retrieval_metrics(first)["i2t"]["r1"] < 100 and retrieval_metrics(second)["t2i"]["r1"] < 100
    report = ensemble_tool([str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--weights", "0.6", "0.4",
                            "--save", str(tmp_path / "ens.npy"), "--unverified"])
    assert report == retrieval_metrics(0.6 * first + 0.4 * second)
    assert np.allclose(np.load(tmp_path / "ens.npy"), 0.6 * first + 0.4 * second, atol=1e-6)
    folds = ensemble_tool([str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--coco_5fold", "--unverified"])
    assert folds["five_fold_1k"]["rsum"] == 600.0 and folds["full_5k"]["rsum"] == 600.0


def save_with_record(path, sims, split):
    """A matrix with the record test.py --save_sims writes beside it (its split's data identity)."""
    from provenance import array_sha256, record
    np.save(path, sims)
    data = {"split": split, "images": sims.shape[0], "captions": sims.shape[1], "captions_sha256": "c",
            "images_id": "i"}
    path.with_suffix(".json").write_text(json.dumps({"provenance": record("scores", [], data,
                                                                          matrix_sha256=array_sha256(sims))}))


def test_coco_5fold_needs_matrices_of_testall(tmp_path, capsys):
    """COCO's 5-fold 1K is defined on testall: a Flickr30K dev matrix is refused in one line, one of
    testall is folded."""
    first, second = half_right(10, range(5), 0), half_right(10, range(5, 10), 1)
    for split in ("dev", "testall"):
        save_with_record(tmp_path / f"a_{split}.npy", first, split)
        save_with_record(tmp_path / f"b_{split}.npy", second, split)
    dev = [str(tmp_path / "a_dev.npy"), str(tmp_path / "b_dev.npy")]
    assert error_line(ensemble_tool, dev + ["--coco_5fold"], capsys) == (
        f"--coco_5fold: {tmp_path / 'a_dev.json'} says split 'dev'; COCO's 5-fold 1K is defined on the 'testall' "
        "split's 5,000 images (testall.py --save_sims): drop --coco_5fold, or give matrices of testall")
    assert ensemble_tool(dev)["rsum"] == 600.0
    folds = ensemble_tool([str(tmp_path / "a_testall.npy"), str(tmp_path / "b_testall.npy"), "--coco_5fold"])
    assert folds["five_fold_1k"]["rsum"] == 600.0


def test_the_tool_names_the_file_that_differs_or_is_missing(tmp_path, capsys):
    from cli.guard import run_guarded
    np.save(tmp_path / "a.npy", np.zeros((10, 50), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((10, 45), np.float32))
    for files, expected in [
        (["a.npy", "b.npy"], "{t}/b.npy has a 10 x 45 score matrix but {t}/a.npy has 10 x 50: ensemble members "
                             "must score the same items"),
        (["a.npy", "missing.npy"], "{t}/missing.npy does not exist"),
    ]:
        capsys.readouterr()
        assert run_guarded(ensemble_tool, [str(tmp_path / name) for name in files] + ["--unverified"]) == 2
        assert capsys.readouterr().err.strip() == "error: " + expected.format(t=tmp_path)
    assert os.path.isfile(tmp_path / "a.npy")


def test_an_ensemble_with_a_released_checkpoint(region_model, region_data, tiny_bert, tmp_path):
    import torch
    from test_released import released_region_image, released_region_text, released_xdim_head, save_region_release
    torch.manual_seed(0)
    release = tmp_path / "checkpoint_24.pth_528.2.tar"
    save_region_release(release, released_region_image(), released_region_text(tiny_bert), released_xdim_head())
    data = ["--data_path", region_data[0], "--bert_path", tiny_bert]
    ours, _ = scores([region_model], tmp_path, "ours", *data)
    theirs, _ = scores([release], tmp_path, "theirs", *data)
    both, saved = scores([release, region_model], tmp_path, "both", *data)
    assert np.allclose(both, (ours + theirs) / 2, atol=1e-6)
    assert saved["members"][0]["history"] == "epoch 25, best rSum 528.2 as recorded by the released training"
