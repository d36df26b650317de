"""The payload of our checkpoints: one class builds it, writes it as the dict files have always held
(format, version, keys in their order), reads versions 1 and 2 back, and refuses any other; the one
reader (checkpoints.loading.read_payload) serves evaluation, --init_from and resume."""

import argparse
import json
import os

import pytest
import torch

from checkpoints.hub import read_folder
from checkpoints.loading import read_checkpoint_config, read_payload
from checkpoints.payload import READABLE_VERSIONS, VERSION, Payload
from cli.commands import resume_checkpoint
from errors import CheckpointError, ConfigError


def same(first, second) -> bool:
    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and torch.equal(first, second)
    if isinstance(first, dict):
        return isinstance(second, dict) and list(first) == list(second) and all(same(first[k], second[k])
                                                                               for k in first)
    if isinstance(first, (list, tuple)):
        return type(first) is type(second) and len(first) == len(second) and all(map(same, first, second))
    return first == second


def test_a_checkpoint_reads_back_as_the_dict_it_holds(short_region_checkpoint):
    path = str(short_region_checkpoint)
    saved = torch.load(path, weights_only=True)
    assert (saved["format"], saved["version"]) == ("dimmatch", VERSION)
    payload = Payload.from_dict(saved, path)
    assert payload.resumable and payload.extra == {} and payload.tokenizer["kind"] == "bert"
    assert same(payload.to_dict(), saved)                   # the same keys, in the same order, the same values
    weights = payload.weights_only()
    assert not weights.resumable and list(weights.to_dict()) == [key for key in saved if key not in
                                                                  ("optimizer", "scaler", "rng", "rng_ranks")]
    assert weights.record() == {key: saved[key] for key in ("progress", "metrics", "data") if saved[key] is not None}
    read, _ = read_payload(path, training_state=True)
    assert isinstance(read, Payload) and same(read.to_dict(), saved)


def test_a_saved_payload_is_the_file_it_was_read_from(short_region_checkpoint, tmp_path):
    path = str(short_region_checkpoint)
    copy = tmp_path / "copy.pth"
    Payload.from_dict(torch.load(path, weights_only=True), path).save(str(copy))
    assert same(torch.load(copy, weights_only=True), torch.load(path, weights_only=True))
    assert [name for name in os.listdir(tmp_path)] == ["copy.pth"]


def test_format_1_is_read_without_a_tokenizer(short_region_checkpoint, tmp_path):
    saved = torch.load(short_region_checkpoint, weights_only=True)
    del saved["tokenizer"]
    saved["version"] = 1
    old = tmp_path / "format1.pth"
    torch.save(saved, old)
    payload, _ = read_payload(str(old))
    assert isinstance(payload, Payload) and payload.version == 1 and payload.tokenizer is None
    assert same(payload.model, saved["model"]) and payload.config == saved["config"]
    assert READABLE_VERSIONS == (1, 2)


def test_other_versions_and_formats_are_refused(short_region_checkpoint, tmp_path):
    saved = torch.load(short_region_checkpoint, weights_only=True)
    saved["version"] = 3
    future = tmp_path / "future.pth"
    torch.save(saved, future)
    expected = f"{future} has checkpoint version 3; this code reads 1, 2"
    for read in (lambda: read_payload(str(future)),
                 lambda: read_checkpoint_config(str(future), argparse.Namespace(), require_data=False),
                 lambda: resume_checkpoint({"resume": str(future)})):
        with pytest.raises(CheckpointError) as caught:
            read()
        assert str(caught.value) == expected
    with pytest.raises(CheckpointError, match="is not a dimmatch checkpoint"):
        Payload.from_dict({"format": "other", "version": 2}, "x.pth")
    with pytest.raises(CheckpointError, match="x.pth has no backbone_config"):
        Payload.from_dict({"format": "dimmatch", "version": 2, "config": {}, "model": {}}, "x.pth")


def test_resume_reads_through_the_one_reader(short_region_checkpoint, monkeypatch):
    import checkpoints.loading as loading
    import cli.commands as commands
    calls = []
    reader = loading.read_payload

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return reader(*args, **kwargs)
    # the one reader, where resume (cli.commands) and evaluation (checkpoints.loading) call it
    monkeypatch.setattr(loading, "read_payload", counted)
    monkeypatch.setattr(commands, "read_payload", counted)
    path, payload = resume_checkpoint({"resume": str(short_region_checkpoint)})
    assert isinstance(payload, Payload) and payload.resumable and calls == [{"training_state": True}]
    read_checkpoint_config(path, argparse.Namespace(), require_data=False)
    assert calls == [{"training_state": True}, {}]


def test_a_model_folder_is_a_payload_without_training_state(trained):
    out, _, _ = trained
    payload = read_folder(str(out / "model_best"))
    last = torch.load(out / "checkpoint_last.pth", weights_only=True)
    assert isinstance(payload, Payload) and not payload.resumable and payload.extra == {}
    assert payload.tokenizer == last["tokenizer"]        # config.json holds the rest as JSON (string keys)
    assert payload.backbone_config == json.loads(json.dumps(last["backbone_config"]))
    with pytest.raises(ConfigError, match="holds weights only"):
        resume_checkpoint({"resume": str(out / "model_best")})
