"""The command line answers before the heavy imports: --help, --list_recipes and one-line mistakes
of every program are parsed and checked without importing torch, transformers or the model code."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "transformers", "modules.model", "pairs")

# Runs a program as `python PROGRAM ARGS` would, then prints which heavy modules were imported.
WRAPPER = """
import json, runpy, sys
program, sys.argv = sys.argv[1], sys.argv[1:]
try:
    runpy.run_path(program, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


def run_light(*argv):
    result = subprocess.run([sys.executable, "-c", WRAPPER, *argv], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    lines = result.stderr.strip().splitlines()
    report = json.loads(lines[-1])
    return report, result.stdout, lines[:-1]


@pytest.mark.parametrize("argv, code", [
    (["train.py", "--help"], 0),
    (["train.py", "--list_recipes"], 0),
    (["train.py", "--bach_size", "3"], 2),
    (["train.py", "--workers", str(10**20)], 2),
    (["train.py", "--seed", "-1"], 2),
    (["train.py", "--resume", "auto", "--overwrite"], 2),
    (["train.py", "--output_dir", "README.md"], 2),
    (["train.py", "--recipe", "no_such_recipe"], 2),
    (["train.py", "--layout", "nope"], 2),
    (["train.py", "--device", "tpu"], 2),
    (["train.py", "--val_split", "test"], 2),
    (["test.py", "--checkpoint", "x.pth", "--device", "cuda:x"], 2),
    (["test.py", "--checkpoint", "x.pth", "--save_sims", "out"], 2),
    (["test.py", "--checkpoint", "x.pth", "--save_sims", "r.npy", "--save_ranks", "r.json"], 2),
    (["test.py", "--help"], 0),
    (["test.py", "--checkpoint", "x.pth", "--weights", "1e308", "1e308"], 2),
    (["testall.py", "--checkpoint", "x.pth", "--eval_mem_gb", "inf"], 2),
    (["test.py", "--checkpoint", "x.pth", "--shortlist", "y.pth"], 2),
    (["tools/ensemble.py", "a.npy", "b.npy", "--weights", "0", "1"], 2),
    (["tools/report.py", "--checkpoint", "x.pth", "--out", "r", "--seed", "-1"], 2),
    (["tools/rerank_sweep.py", "--checkpoint", "x.pth", "--out", "o", "--k", "0"], 2),
    (["tools/make_demo_data.py", "d", "--train_images", "0"], 2),
    (["tools/convert_checkpoint.py", "a.pth", "b.pth", "--bogus"], 2),
    (["demo/__main__.py", "--epochs", "0"], 2),
    (["tools/make_demo_data.py", "--help"], 0),
    (["tools/retrieve.py", "text", "--index", "x", "--query", "a", "--top", "0"], 2),
    (["tools/retrieve.py", "index", "--help"], 0),
])
def test_answers_without_the_heavy_imports(argv, code):
    report, out, errors = run_light(*argv)
    assert report["heavy"] == [], f"{argv} imported {report['heavy']} before answering"
    assert report["code"] == code
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith("error: "), errors
    if argv[-1] == "--list_recipes":
        assert "xdim_region_f30k" in out


def test_the_light_catalogue_agrees_with_the_registries():
    """The declarations the parsers use are those of the encoder pairs, heads and losses that build models."""
    from config import catalogue
    from modules.heads import HEADS
    from modules.losses import LOSSES
    from pairs import PAIRS
    for declared, registry in ((catalogue.PAIRS, PAIRS), (catalogue.HEADS, HEADS), (catalogue.LOSSES, LOSSES)):
        assert list(declared) == list(registry)
        for name, spec in registry.items():
            assert (spec.name, spec.summary, getattr(spec, "options", ())) == \
                   (declared[name].name, declared[name].summary, declared[name].options)


def test_a_user_error_under_torchrun_is_one_line_from_rank_zero_only():
    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2"}
    result = subprocess.run([sys.executable, "train.py", "--seed", "-1"], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2 and result.stderr == ""
    result = subprocess.run([sys.executable, "train.py", "--seed", "-1"], cwd=ROOT, capture_output=True, text=True,
                            env={**env, "RANK": "0"}, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == "error: --seed must be at least 0 (got -1)"


@pytest.mark.parametrize("script", ["train_region_f30k.sh", "train_region_coco.sh", "train_clip_based_f30k.sh",
                                    "train_clip_based_coco.sh"])
def test_the_training_scripts_run_from_any_folder(script, tmp_path):
    """From another folder the script finds train.py (a mistake is still train.py's one line)."""
    result = subprocess.run(["sh", os.path.join(ROOT, script), "--print_config", "--bach_size", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 2 and result.stderr == "error: unrecognized arguments: --bach_size 1\n"


def test_a_scripts_relative_paths_are_taken_from_where_the_user_stands(tmp_path):
    (tmp_path / "data" / "Flickr30K").mkdir(parents=True)
    result = subprocess.run(["sh", os.path.join(ROOT, "train_region_f30k.sh"), "--print_config"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["data_path"] == str(tmp_path / "data" / "Flickr30K")
    assert config["output_dir"] == "runs/f30k_region_xdim" and not (tmp_path / "runs").exists()


def test_retrieve_offers_the_dtypes_the_index_writes():
    from retrieval.collection import DTYPES
    from tools import retrieve
    assert retrieve.DTYPES == tuple(DTYPES)
