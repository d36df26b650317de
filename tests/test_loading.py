"""Loading a checkpoint for evaluation: the file is memory-mapped (a training checkpoint's optimiser
state is never read), the backbone is built without its random initialisation, and the model equals
one built and loaded the usual way, buffers included; a file changed after it was read is refused."""

import argparse
import os
import shutil

import pytest
import torch
from transformers import BertPreTrainedModel

from conftest import error_line
from checkpoints import native
from checkpoints.loading import load_model, read_checkpoint_config
from cli.commands import evaluate, train
from errors import CheckpointError
from pairs import build_model

TEST = (lambda argv: evaluate(argv, "test"))


def usual_model(path: str):
    payload = native.read_file(path)
    model = build_model(read_checkpoint_config(path, argparse.Namespace()).cfg,
                        backbone_config=payload["backbone_config"])
    native.load_weights(model, payload["model"], path)
    return model.eval()


@pytest.mark.parametrize("which", ["region", "clip"])
def test_the_loaded_model_equals_the_usually_built_one(which, short_region_checkpoint, short_clip_checkpoint):
    path = str(short_region_checkpoint if which == "region" else short_clip_checkpoint)
    loaded, usual = load_model(read_checkpoint_config(path, argparse.Namespace())).model, usual_model(path)
    for name, tensor in usual.named_buffers():     # non-persistent ones (position ids) included
        assert torch.equal(dict(loaded.named_buffers())[name], tensor), name
    for name, tensor in usual.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[name], tensor), name
    assert len(dict(loaded.named_buffers())) == len(dict(usual.named_buffers()))


def test_the_backbone_is_not_randomly_initialised_before_its_weights_are_loaded(short_region_checkpoint,
                                                                               monkeypatch):
    calls = []
    original = BertPreTrainedModel._init_weights
    monkeypatch.setattr(BertPreTrainedModel, "_init_weights", lambda self, module: calls.append(module) or
                        original(self, module))
    read = read_checkpoint_config(str(short_region_checkpoint), argparse.Namespace())
    load_model(read)
    assert calls == []
    build_model(read.cfg, backbone_config=read.backbone_config)   # the usual build does initialise
    assert calls


def test_only_the_model_tensors_are_read_from_the_mapped_file(short_region_checkpoint):
    """The weights are copied out of the mapping at once (a file cut short later cannot fault the
    process); the optimiser state stays mapped, never read."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc (Linux) to see the mapping")
    read = read_checkpoint_config(str(short_region_checkpoint), argparse.Namespace())
    mapped = []
    for line in open("/proc/self/maps").read().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and os.path.exists(fields[5]) and os.path.samefile(fields[5], short_region_checkpoint):
            mapped.append([int(bound, 16) for bound in fields[0].split("-")])

    def in_mapping(tensor):
        return any(start <= tensor.data_ptr() < stop for start, stop in mapped)
    assert not any(in_mapping(tensor) for tensor in read.payload.model.values())
    moments = [value for state in read.payload.optimizer["state"].values() for value in state.values()
               if isinstance(value, torch.Tensor) and value.numel() > 1]
    assert moments and all(in_mapping(tensor) for tensor in moments)


@pytest.mark.parametrize("how", ["in place", "renamed over"])
def test_a_checkpoint_changed_after_it_was_read_is_refused(short_region_checkpoint, tmp_path, how):
    path = tmp_path / "model.pth"
    shutil.copyfile(short_region_checkpoint, path)
    read = read_checkpoint_config(str(path), argparse.Namespace())
    if how == "in place":                   # as `cp other.pth model.pth` does: same inode, new content
        with open(path, "r+b") as handle:
            handle.write(open(short_region_checkpoint, "rb").read())
        os.utime(path, ns=(read.file_state[2] + 10**9,) * 2)
    else:                                   # as a training run saves: a new file renamed over the old
        shutil.copyfile(short_region_checkpoint, tmp_path / "new.pth")
        os.replace(tmp_path / "new.pth", path)
    with pytest.raises(CheckpointError, match="was replaced or changed while it was being read"):
        load_model(read)


@pytest.mark.parametrize("content", [b"a caption\nanother\n", b"{\"a\": 1}", os.urandom(300)])
def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    assert error_line(TEST, ["--checkpoint", str(path)], capsys).startswith(f"checkpoint {path} cannot be read")
    message = error_line(train, ["--output_dir", str(tmp_path), "--resume", str(path)], capsys)
    assert message.startswith(f"checkpoint {path} cannot be read") and "weights_only=False" not in message
