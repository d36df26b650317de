"""Messages that are true and point at the fix: the option they name is the one that helps."""

import os
from types import SimpleNamespace

import pytest

from cli.main import train
from conftest import REGION_DIM, run_cli
from errors import DataError, UserError


def test_after_max_steps_the_hint_raises_the_limit(tmp_path, region_data, tiny_bert):
    out = tmp_path / "run"
    argv = ["--data_path", region_data[0], "--data_name", "f30k_precomp", "--bert_path", tiny_bert, "--img_dim",
            str(REGION_DIM), "--batch_size", "16", "--embed_size", "16", "--workers", "0", "--device", "cpu",
            "--max_steps", "2", "--output_dir", str(out)]
    assert run_cli(train, argv) == 0
    log = (out / "train.log").read_text()
    assert "stopped after step 2; continue with --resume auto --max_steps N (a larger N, or 0 for no limit)" in log


def test_a_moved_shortlist_checkpoint_is_given_with_shortlist(tmp_path):
    from provenance import check_checkpoint
    saved = {"file": str(tmp_path / "gone.pth"), "sha256": "0" * 64}
    with pytest.raises(UserError, match="give its new place with --shortlist$"):
        check_checkpoint(saved, str(tmp_path / "gone.pth"), "index x.index", "--shortlist")


@pytest.mark.parametrize("content", [b"", b"not an image"])
def test_an_unreadable_image_stops_indexing_in_a_line_that_says_so(tmp_path, content):
    from pairs.clip import collection
    (tmp_path / "broken.jpg").write_bytes(content)
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    images, names = collection(SimpleNamespace(image_size=64, truncated_images="refuse"), str(tmp_path))
    for index, name in enumerate(names):
        with pytest.raises(DataError, match=f"^indexing --images {tmp_path} stopped: image {tmp_path / name} "):
            images[index]
