"""Checkpoints as hub-style model folders: written by train.py and tools/convert_checkpoint.py
--format hub, no pickle inside, the same scores as the .pth they come from, found offline by name
in a HuggingFace cache, and refused in one line when a file no longer matches its record."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import REGION_DIM, ROOT, error_line, run_cli
from cli.commands import evaluate, train
from test_released import released_region_image, released_region_text, released_xdim_head, save_region_release

TEST = (lambda argv: evaluate(argv, "test"))


def scores(checkpoint, data_path, tmp_path, name, *extra):
    sims = tmp_path / f"{name}.npy"
    result = evaluate(["--checkpoint", str(checkpoint), "--data_path", data_path, "--workers", "0",
                       "--save_sims", str(sims), "--overwrite", *extra])
    return result["report"]["rsum"], np.load(sims)


@pytest.fixture(scope="module")
def run(tmp_path_factory, region_data, tiny_bert):
    """A one-epoch X-Dim run (validated once, so it has a model_best folder)."""
    out = tmp_path_factory.mktemp("hub") / "run"
    assert run_cli(train, ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert,
                           "--img_dim", str(REGION_DIM), "--embed_size", "16", "--batch_size", "16",
                           "--num_epochs", "1", "--workers", "0", "--device", "cpu", "--output_dir", str(out)]) == 0
    return out


def convert(source, target, *extra):
    from tools.convert_checkpoint import main
    assert run_cli(main, [str(source), str(target), "--format", "hub", *extra]) == 0


def test_train_writes_model_best_as_a_folder_without_pickle(run):
    folder = run / "model_best"
    files = sorted(os.listdir(folder))
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "dimmatch" and meta["layout"] == "folder" and meta["config"]["sim_head"] == "xdim"
    assert set(files) == {"config.json", "model.safetensors", "README.md", *meta["tokenizer"]["files"]}
    for name in files:                                   # no pickle anywhere: text files and safetensors
        head = (folder / name).read_bytes()[:2]
        assert head != b"\x80\x04" and not (folder / name).read_bytes().startswith(b"PK"), name
    weights = load_file(folder / "model.safetensors")
    last = torch.load(run / "checkpoint_last.pth", weights_only=True)
    assert set(weights) == set(last["model"])           # safetensors holds every parameter and buffer
    card = (folder / "README.md").read_text()
    for part in ("# X-Dim", "Cross-Dimensional Semantic Dependency", "## Recipe", "## Training data",
                 "rSum", "python test.py --checkpoint", "Content hash"):
        assert part in card, part
    assert "{content_sha256}" not in card
    assert not [name for name in os.listdir(run) if name.startswith(".model_best")]   # no leftovers


def test_folder_round_trip_gives_the_same_scores_as_the_pth(run, region_data, tmp_path):
    folder = tmp_path / "last_folder"
    convert(run / "checkpoint_last.pth", folder)
    rsum, sims = scores(run / "checkpoint_last.pth", region_data[0], tmp_path, "pth")
    rsum_folder, sims_folder = scores(folder, region_data[0], tmp_path, "folder")
    assert rsum_folder == rsum and np.array_equal(sims_folder, sims)
    saved = json.loads((tmp_path / "folder.json").read_text())
    assert saved["provenance"]["checkpoints"][0]["sha256"].startswith("folder:")
    # the model_best folder train.py wrote evaluates to the rSum its validation recorded
    best = json.loads((run / "model_best" / "config.json").read_text())
    rsum_best, _ = scores(run / "model_best", region_data[0], tmp_path, "best", "--split", "dev")
    assert abs(rsum_best - best["metrics"]["rsum"]) < 1e-6


def test_from_pretrained_save_pretrained_round_trip(run, tmp_path):
    from checkpoints.pretrained import PretrainedMatcher as MatcherFolder
    loaded = MatcherFolder.from_pretrained(str(run / "model_best"))
    loaded.save_pretrained(str(tmp_path / "again"))
    again = MatcherFolder.from_pretrained(str(tmp_path / "again"))
    first, second = loaded.model.state_dict(), again.model.state_dict()
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    assert again.cfg.to_dict() == loaded.cfg.to_dict()


def fake_cache(cache, folder, repo="someone/xdim-tiny", revision="0123456789abcdef0123456789abcdef01234567"):
    """A HuggingFace hub cache holding `folder` as repository `repo` at `revision` (refs/main)."""
    base = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, base / "snapshots" / revision)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    return repo


@pytest.mark.slow
def test_a_folder_in_the_huggingface_cache_loads_offline_by_name(run, region_data, tmp_path):
    cache = tmp_path / "hf" / "hub"
    repo = fake_cache(cache, run / "model_best")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, os.path.join(ROOT, "test.py"), "--checkpoint", repo, "--data_path", region_data[0],
               "--workers", "0", "--split", "dev"]
    found = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert found.returncode == 0, found.stderr
    expected = json.loads((run / "model_best" / "config.json").read_text())["metrics"]["rsum"]
    assert f"rSum {expected:.1f}" in found.stdout
    pinned = subprocess.run(command[:3] + [repo + "@main"] + command[4:], capture_output=True, text=True,
                            cwd=tmp_path, env=env)
    assert pinned.returncode == 0, pinned.stderr
    missing = subprocess.run(command[:3] + ["someone/absent"] + command[4:], capture_output=True, text=True,
                             cwd=tmp_path, env=env)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: --checkpoint someone/absent is neither a file or folder here ({tmp_path}) nor in the HuggingFace "
        "cache, and HF_HUB_OFFLINE is set: give a local folder or file, or download it once online"]


def test_hub_names_resolve_through_the_cache_in_process(run, tmp_path, monkeypatch):
    from huggingface_hub import constants
    from checkpoints.hub import resolve
    from checkpoints.pretrained import PretrainedMatcher as MatcherFolder
    cache = tmp_path / "hub"
    repo = fake_cache(cache, run / "model_best")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert os.path.samefile(resolve(repo), cache / f"models--{repo.replace('/', '--')}" / "snapshots" /
                            "0123456789abcdef0123456789abcdef01234567")
    loaded = MatcherFolder.from_pretrained(repo, revision="main", local_files_only=True)
    assert loaded.cfg.sim_head == "xdim"


def test_a_changed_file_in_a_folder_is_refused_in_one_line(run, region_data, tmp_path, capsys):
    folder = tmp_path / "copy"
    shutil.copytree(run / "model_best", folder)
    weights = load_file(folder / "model.safetensors")
    from safetensors.torch import save_file
    key = sorted(weights)[0]
    weights[key] = weights[key] + 1
    save_file(weights, folder / "model.safetensors")
    message = error_line(TEST, ["--checkpoint", str(folder), "--data_path", region_data[0], "--workers", "0"], capsys)
    assert message.startswith(f"checkpoint {folder}: model.safetensors is not the file its config.json records")
    shutil.copy(run / "model_best" / "model.safetensors", folder / "model.safetensors")
    vocab = folder / "tokenizer.json"
    vocab.write_text(vocab.read_text().replace("[MASK]", "[MASQ]"))
    assert error_line(TEST, ["--checkpoint", str(folder), "--data_path", region_data[0], "--workers", "0"],
                      capsys).startswith(f"checkpoint {folder}: tokenizer.json is not the file its config.json records")
    shutil.copy(run / "model_best" / "tokenizer.json", folder / "tokenizer.json")
    config = folder / "config.json"     # an edited backbone config would change the scores silently
    config.write_text(config.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    assert '"relu"' in config.read_text()
    assert error_line(TEST, ["--checkpoint", str(folder), "--data_path", region_data[0], "--workers", "0"],
                      capsys) == f"{config} is not the config the weights were saved with (it was edited or comes " \
                                 "from another folder); copy the model folder again"
    assert oct(os.stat(run / "model_best" / "model.safetensors").st_mode & 0o777) == "0o644"
    assert error_line(TEST, ["--checkpoint", str(run), "--data_path", region_data[0], "--workers", "0"], capsys) \
        == f"checkpoint {run} is a training run's folder; give the checkpoint in it ({run / 'model_best'})"


def test_convert_a_released_file_to_a_folder_with_the_same_scores(tmp_path, region_data, tiny_bert, capsys):
    torch.manual_seed(3)
    path = tmp_path / "checkpoint_24.pth_528.2.tar"
    save_region_release(path, released_region_image(), released_region_text(tiny_bert), released_xdim_head())
    folder = tmp_path / "xdim_f30k"
    convert(path, folder, "--bert_path", tiny_bert)
    assert "released X-Dim checkpoint" in capsys.readouterr().out
    rsum, sims = scores(path, region_data[0], tmp_path, "released", "--bert_path", tiny_bert)
    rsum_folder, sims_folder = scores(folder, region_data[0], tmp_path, "converted")
    assert rsum_folder == rsum and np.array_equal(sims_folder, sims)
    assert "Converted from the authors' released checkpoint" in (folder / "README.md").read_text()
    # twice into the same folder: refused without --overwrite, replaced with it
    from tools.convert_checkpoint import main
    assert error_line(main, [str(path), str(folder), "--format", "hub", "--bert_path", tiny_bert], capsys) == \
        f"output {folder} exists already; give --overwrite to replace it, or another name"
    convert(path, folder, "--bert_path", tiny_bert, "--overwrite")
    # no half-written or set-aside folder left (the manifest records the saved score files)
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == [".dimmatch-manifest.json"]


def test_convert_a_released_esl_clip_file_to_a_folder_with_the_same_scores(tmp_path, image_data, tiny_clip):
    from datasets.captions import load_tokenizer
    from test_released import evaluate_file, released_clip_head, released_openai_clip, save_clip_release
    root, images_dir, _ = image_data
    torch.manual_seed(4)
    clip = released_openai_clip(len(load_tokenizer("clip", tiny_clip).get_vocab()))
    path = tmp_path / "model_best_adaptive_coco_clip_based.pth"
    save_clip_release(path, {**{"clip." + k: v for k, v in clip.items()}, **released_clip_head("adaptive")})
    data = ("--dataset", "f30k", "--image_root", images_dir, "--ann_path", root)
    folder = tmp_path / "esl_clip_a"
    convert(path, folder, "--clip_path", tiny_clip)
    assert np.array_equal(evaluate_file(folder, *data), evaluate_file(path, *data, "--clip_path", tiny_clip))
    meta = json.loads((folder / "config.json").read_text())
    assert meta["config"]["encoders"] == "clip" and meta["tokenizer"]["kind"] == "clip"
    assert "# ESL-CLIP A" in (folder / "README.md").read_text()


def test_push_to_hub_uploads_the_checked_folder(run, tmp_path, monkeypatch):
    """push_to_hub goes through huggingface_hub's API (faked here: no network in tests); a folder
    whose files do not match its record is refused before anything is uploaded."""
    import huggingface_hub
    from errors import CheckpointError
    from checkpoints.hub import push_to_hub
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **options):
            calls.append(("create", repo_id, options["repo_type"]))

        def upload_folder(self, folder_path, repo_id, **options):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
            return "https://huggingface.co/someone/xdim-tiny/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = run / "model_best"
    assert push_to_hub(str(folder), "someone/xdim-tiny").endswith("/commit/1")
    assert calls == [("create", "someone/xdim-tiny", "model"),
                     ("upload", "someone/xdim-tiny", sorted(os.listdir(folder)))]
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "tokenizer_config.json").write_text("{}")
    with pytest.raises(CheckpointError):
        push_to_hub(str(damaged), "someone/xdim-tiny")
    assert len(calls) == 2


def test_an_interrupted_folder_write_leaves_the_old_folder_and_is_cleaned_up(run, tmp_path, monkeypatch, capsys):
    """A write killed half-way leaves the previous folder whole; the next write removes its leftovers.
    A folder name that looks like a file is refused before any work."""
    import checkpoints.hub as hub
    from tools.convert_checkpoint import main
    folder = tmp_path / "model"
    convert(run / "checkpoint_last.pth", folder)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(hub, "_write_text", killed)
    assert run_cli(main, [str(run / "checkpoint_last.pth"), str(folder), "--format", "hub", "--overwrite"]) == 130
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder)} == before
    monkeypatch.undo()
    (tmp_path / ".model.tmp-left").mkdir()            # what a SIGKILL would leave
    convert(run / "checkpoint_last.pth", folder, "--overwrite")
    assert sorted(os.listdir(tmp_path)) == ["model"]
    assert error_line(main, [str(run / "checkpoint_last.pth"), str(tmp_path / "x.pth"), "--format", "hub"],
                      capsys) == (f"output {tmp_path / 'x.pth'}: --format hub writes a model folder; give a folder "
                                  "name (without .pth), or --format pth for one file")


def test_convert_never_writes_inside_its_input_or_over_a_runs_model_best(run, tmp_path, capsys):
    from tools.convert_checkpoint import main
    folder = tmp_path / "copy"
    shutil.copytree(run / "model_best", folder)
    assert error_line(main, [str(folder), str(folder / "inner"), "--format", "hub"], capsys) == \
        f"output {folder / 'inner'} lies inside input {folder}; write it elsewhere"
    assert error_line(main, [str(run / "checkpoint_last.pth"), str(run / "model_best"), "--format", "hub",
                             "--overwrite"], capsys).startswith(f"output {run / 'model_best'} is the model_best of the "
                                                                "training run")
    (tmp_path / "afile").write_text("mine")
    assert error_line(main, [str(folder), str(tmp_path / "afile"), "--format", "hub", "--overwrite"], capsys) == \
        f"output {tmp_path / 'afile'} is a file; --format hub writes a model folder: give a folder name"
    assert (tmp_path / "afile").read_text() == "mine" and sorted(os.listdir(folder)) == \
        sorted(os.listdir(run / "model_best"))


def test_convert_overwrite_replaces_only_a_model_folder_of_ours_holding_only_its_files(run, tiny_bert, tmp_path,
                                                                                       capsys):
    """--overwrite never deletes a user's folder that merely has a config.json (a BERT backbone), nor
    a file the user added to a model folder; a model folder of ours alone is replaced."""
    from tools.convert_checkpoint import main
    source = str(run / "checkpoint_last.pth")
    bert = tmp_path / "my_bert"
    shutil.copytree(tiny_bert, bert)
    before = sorted(os.listdir(bert))
    line = error_line(main, [source, str(bert), "--format", "hub", "--overwrite"], capsys)
    assert line.startswith(f"{bert} is not a dimmatch model folder") and sorted(os.listdir(bert)) == before
    copy = tmp_path / "release"
    shutil.copytree(run / "model_best", copy)
    (copy / "NOTES.md").write_text("mine")
    line = error_line(main, [source, str(copy), "--format", "hub", "--overwrite"], capsys)
    assert line.startswith(f"{copy} holds NOTES.md, which is not a file of its model")
    assert (copy / "NOTES.md").read_text() == "mine"
    os.remove(copy / "NOTES.md")
    assert run_cli(main, [source, str(copy), "--format", "hub", "--overwrite"]) == 0


def test_a_model_folder_without_its_weights_is_one_line(run, tmp_path, capsys):
    partial = tmp_path / "partial"
    shutil.copytree(run / "model_best", partial)
    os.remove(partial / "model.safetensors")
    assert error_line(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(partial)], capsys) == \
        f"checkpoint {partial} lacks model.safetensors, which a model folder holds; copy the whole folder (a git-lfs " \
        "clone: git lfs pull)"


def test_a_config_without_its_weights_record_is_one_line(run, tmp_path, capsys):
    edited = tmp_path / "edited"
    shutil.copytree(run / "model_best", edited)
    meta = json.loads((edited / "config.json").read_text())
    del meta["weights"]
    (edited / "config.json").write_text(json.dumps(meta))
    assert error_line(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(edited)], capsys) == \
        f"{edited / 'config.json'} records no weights (its 'weights' entry is missing or incomplete): it was " \
        "edited; copy the model folder again"
