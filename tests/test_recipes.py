"""The released recipes: config/recipes/*.json through the schema, the shell scripts as their
one-line calls (resolving to exactly the configs the scripts gave before the recipes were data),
and runs end to end on the tiny setup, with paths and model sizes overridden."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REGION_DIM, ROOT, error_line, run_cli
from cli.commands import evaluate, train

TINY = ["--num_epochs", "1", "--max_steps", "2", "--workers", "0", "--device", "cpu", "--eval_batch_size", "16"]


def run_recipe(script, env, *extra):
    result = subprocess.run(["sh", os.path.join(ROOT, script), *extra], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable, **env}, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


SCRIPTS = {"train_region_f30k.sh": ("xdim", "esl_h", "esl_a", "cosine"),
           "train_region_coco.sh": ("xdim", "esl_h", "esl_a", "cosine"),
           "train_clip_based_f30k.sh": ("esl_h", "esl_a", "cosine"),
           "train_clip_based_coco.sh": ("esl_h", "esl_a", "cosine")}
# what each script resolved to before the recipes became data files (recorded from that code)
BEFORE = json.load(open(os.path.join(ROOT, "tests", "data", "shell_recipes_before.json"), encoding="utf-8"))


def script_arguments(tmp_path, script, head, clip):
    """The train.py arguments a shell recipe passes (its PYTHON replaced by a recorder)."""
    recorder = tmp_path / "record.py"
    recorder.write_text("import json, sys\nprint(json.dumps(sys.argv[2:]))\n")
    env = {**os.environ, "HEAD": head, "PYTHON": f"{sys.executable} {recorder}", "DATA_PATH": "DATA",
           "BERT_PATH": "BERT", "IMAGE_ROOT": "IMAGES", "ANN_PATH": "ANN", "CLIP_PATH": clip, "OUTPUT_DIR": "OUT"}
    result = subprocess.run(["sh", os.path.join(ROOT, script)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("script,head", [(s, h) for s, heads in SCRIPTS.items() for h in heads])
def test_each_shell_recipe_resolves_to_the_config_it_gave_before(tmp_path, tiny_clip, script, head, capsys):
    from cli.commands import train
    argv = script_arguments(tmp_path, script, head, tiny_clip)
    assert argv[:2] == ["--recipe", f"{head}_{'clip' if 'clip' in script else 'region'}_{script.split('_')[-1][:-3]}"]
    capsys.readouterr()
    assert run_cli(train, argv + ["--print_config"]) == 0
    config = json.loads(capsys.readouterr().out)
    config["clip_path"] = "CLIP" if config["clip_path"] == tiny_clip else config["clip_path"]
    before = BEFORE[f"{script}:{head}"]
    # options added since, at the values that keep the released behaviour
    layout = "precomp" if "region" in script else "coco" if "coco" in script else "karpathy"
    added = {"recipe": argv[1], "global_loss_weight": 0.0, "image_size": None, "layout": layout}
    for name, value in added.items():
        if name not in before:
            assert config.pop(name) == value, name
    assert config == before


def test_recipes_are_complete_and_checked(tmp_path, capsys):
    from config.options import all_options
    from config.recipes import read_recipe, recipe_names
    from cli.commands import train
    names = recipe_names()
    assert len(names) == 14 and {f"{head}_region_{d}" for head in ("xdim", "esl_h", "esl_a", "cosine")
                                 for d in ("f30k", "coco")} < set(names)
    for name in names:
        assert read_recipe(name, all_options())["sim_head"] == name.split("_region")[0].split("_clip")[0]
    capsys.readouterr()
    assert run_cli(train, ["--list_recipes"]) == 0
    assert capsys.readouterr().out.count("\n") == 14
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"description": "x", "options": {"batch_size": 0}}))
    assert error_line(train, ["--recipe", str(bad)], capsys) == \
        f"recipe {bad}: --batch_size must be at least 1 (got 0)"
    bad.write_text(json.dumps({"description": "x", "options": {"batchsize": 8}}))
    assert error_line(train, ["--recipe", str(bad)], capsys) == \
        f"recipe {bad}: 'batchsize' is not an option of train.py"
    assert error_line(train, ["--recipe", "nope"], capsys).startswith("--recipe nope is not a recipe (choose ")
    assert error_line(train, ["--recipe", "esl_h_clip_f30k", "--encoders", "region_bert"], capsys) == \
        "--recipe esl_h_clip_f30k trains clip encoders, not region_bert"


@pytest.mark.slow
@pytest.mark.parametrize("head", ["xdim", "esl_a"])
def test_region_f30k_recipe(tmp_path, region_data, tiny_bert, head):
    out = tmp_path / "run"
    run_recipe("train_region_f30k.sh", {"HEAD": head, "DATA_PATH": region_data[0], "BERT_PATH": tiny_bert,
                                        "OUTPUT_DIR": str(out)},
               "--img_dim", str(REGION_DIM), "--batch_size", "16", "--embed_size", "32", *TINY)
    config = json.loads((out / "config.json").read_text())
    assert config["sim_head"] == head and config["lr_update"] == 15 and config["embed_size"] == 32
    assert config["num_epochs"] == 1 and config["recipe"] == f"{head}_region_f30k"  # the override wins


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("options,key", [({"output_dir": "runs/x"}, "output_dir"), ({"resume": "auto"}, "resume"),
                                         ({"overwrite": True}, "overwrite"), ({"init_from": "x.pth"}, "init_from")])
def test_a_recipe_holds_no_option_of_the_run(tmp_path, capsys, options, key):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"description": "x", "base": "_region_f30k", "options": options}))
    assert error_line(train, ["--recipe", str(recipe), "--print_config"], capsys) == (
        f"recipe {recipe}: '{key}' is an option of the run, not of a recipe; give it on the command line")


def test_recipe_bases_are_found_next_to_the_recipe_and_named_in_errors(tmp_path, region_data, capsys):
    (tmp_path / "base.json").write_text(json.dumps({"description": "b", "base": "_region_f30k",
                                                    "options": {"margin": 0.3}}))
    (tmp_path / "child.json").write_text(json.dumps({"description": "c", "base": "base.json", "options": {}}))
    (tmp_path / "bad.json").write_text(json.dumps({"description": "c", "base": "_nope", "options": {}}))
    (tmp_path / "mixed.json").write_text(json.dumps({"description": "m", "base": "_region_f30k",
                                                     "options": {"encoders": "clip"}}))
    os.chdir(ROOT)
    capsys.readouterr()
    assert run_cli(train, ["--recipe", str(tmp_path / "child.json"), "--data_path", region_data[0],
                           "--print_config"]) == 0
    assert json.loads(capsys.readouterr().out)["margin"] == 0.3
    assert error_line(train, ["--recipe", str(tmp_path / "bad.json"), "--print_config"], capsys).startswith(
        f"recipe {tmp_path / 'bad.json'}: base _nope is not a recipe (choose ")
    assert error_line(train, ["--recipe", str(tmp_path / "mixed.json"), "--print_config"], capsys) == (
        f"recipe {tmp_path / 'mixed.json'} sets encoders clip over its base's region_bert: a recipe and its bases "
        "train one encoder pair")


def test_a_recipe_may_not_contradict_init_from(short_region_checkpoint, region_data, tmp_path, capsys):
    message = error_line(train, ["--recipe", "esl_h_region_f30k", "--data_path", region_data[0], "--init_from",
                                 str(short_region_checkpoint), "--output_dir", str(tmp_path / "o")], capsys)
    assert message.startswith(f"--recipe esl_h_region_f30k sets sim_head esl_h, but --init_from "
                              f"{short_region_checkpoint} has sim_head xdim")
