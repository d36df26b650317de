"""The shell recipes run end to end on the tiny setup, with paths and model sizes overridden."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REGION_DIM, ROOT, run_cli
from cli.commands import evaluate

TINY = ["--num_epochs", "1", "--max_steps", "2", "--workers", "0", "--device", "cpu", "--eval_batch_size", "16"]


def run_recipe(script, env, *extra):
    result = subprocess.run(["sh", os.path.join(ROOT, script), *extra], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable, **env}, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("head,embed_size,epochs", [("xdim", 1024, 25), ("esl_a", 512, 30)])
def test_region_f30k_recipe(tmp_path, region_data, tiny_bert, head, embed_size, epochs):
    out = tmp_path / "run"
    run_recipe("train_region_f30k.sh", {"HEAD": head, "DATA_PATH": region_data[0], "BERT_PATH": tiny_bert,
                                        "OUTPUT_DIR": str(out)},
               "--img_dim", str(REGION_DIM), "--batch_size", "16", "--embed_size", "32", *TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["sim_head"] == head and config["lr_update"] == 15 and config["embed_size"] == 32
    assert config["num_epochs"] == 1  # the override wins over the recipe's value
    recipe = open(os.path.join(ROOT, "train_region_f30k.sh")).read()
    assert f"--embed_size {embed_size}" in recipe and f"--num_epochs {epochs}" in recipe


def test_clip_f30k_recipe(tmp_path, image_data, tiny_clip):
    root, images, _ = image_data
    out = tmp_path / "run"
    run_recipe("train_clip_based_f30k.sh", {"IMAGE_ROOT": images, "ANN_PATH": root, "CLIP_PATH": tiny_clip,
                                            "OUTPUT_DIR": str(out)}, "--batch_size", "8", *TINY)
    config = json.loads((out / "config.json").read_text())
    assert (config["clip_lr"], config["noclip_lr"], config["weight_decay"], config["val_split"]) == \
        (1e-6, 3e-5, 0.2, "val")


def coco_layout(image_data, target):
    """The generated Flickr-style images rearranged as Karpathy COCO: train2014/ val2014/ and
    train_coco.json, dev_coco.json, testall_coco.json (the test split gets 10 images -> 5 folds of 2)."""
    root, images, _ = image_data
    data = json.loads(open(os.path.join(root, "dataset_flickr30k.json")).read())
    splits = {"train": [], "val": [], "test": []}
    for number, image in enumerate(data["images"]):
        folder = "train2014" if image["split"] == "train" else "val2014"
        name = f"COCO_{folder}_{number:012d}.jpg"
        os.makedirs(target / folder, exist_ok=True)
        shutil.copy(os.path.join(images, image["filename"]), target / folder / name)
        splits[image["split"]].append({"file_name": name, "sentences": image["sentences"]})
    for split, file in (("train", "train_coco.json"), ("val", "dev_coco.json"), ("test", "testall_coco.json")):
        (target / file).write_text(json.dumps({"images": splits[split]}))
    return target


def test_clip_coco_recipe_then_testall(tmp_path, image_data, tiny_clip, capsys):
    coco = coco_layout(image_data, tmp_path / "coco")
    out = tmp_path / "run"
    run_recipe("train_clip_based_coco.sh", {"IMAGE_ROOT": str(coco), "ANN_PATH": str(coco), "CLIP_PATH": tiny_clip,
                                            "OUTPUT_DIR": str(out)}, "--batch_size", "8", *TINY)
    capsys.readouterr()
    assert run_cli(lambda argv: evaluate(argv, "testall", coco_testall=True),
                   ["--checkpoint", str(out / "checkpoint_last.pth"), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "testall: mean of 5 folds of 2 images" in printed and "testall: full 10 images" in printed
