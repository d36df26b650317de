"""Region models on one's own photos: tools/retrieve.py index --images --detector extracts, indexes
and answers text queries with the images' names; tools/report.py boxes the top regions."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import REGION_DIM, error_line, run_cli
from detector.testing import config_dict, write_detector
from tests.test_detector import make_images
from tests.test_detector_cli import stop_at_second_batch

pytestmark = pytest.mark.slow      # a short training run, extraction, indexing, a report


def retrieve(argv):
    from tools.retrieve import main
    return main(argv)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    """36 proposals: the default --regions 36 of lxmert is at most RPN.POST_NMS_TOPK_TEST."""
    assert REGION_DIM == 64
    return write_detector(str(tmp_path_factory.mktemp("det")), config_dict(res2=8, min_size=64, max_size=96,
                                                                             post_nms=36), seed=2)


def test_index_of_photos_answers_text_queries(short_region_checkpoint, detector, tmp_path, capsys):
    photos = str(tmp_path / "photos")
    make_images(photos)
    out = str(tmp_path / "photos.index")
    argv = ["index", "--checkpoint", str(short_region_checkpoint), "--images", photos, "--detector", detector,
            "--protocol", "lxmert", "--out", out, "--device", "cpu"]
    assert run_cli(retrieve, argv) == 0
    record = json.load(open(tmp_path / "photos.regions.json"))
    assert record["format"] == "dimmatch-regions" and np.load(tmp_path / "photos.regions_boxes.npy").shape == (4, 36, 4)
    results = retrieve(["text", "--index", out, "--query", "a red square", "--top", "2", "--device", "cpu"])
    assert len(results[0]) == 2
    assert "a.jpg" in open(os.path.join(out, "names.txt")).read()
    # a second index of the same photos reuses their regions
    again = ["index", "--checkpoint", str(short_region_checkpoint), "--images", photos, "--detector", detector,
             "--protocol", "lxmert", "--out", str(tmp_path / "photos.index"), "--device", "cpu", "--overwrite"]
    capsys.readouterr()
    assert run_cli(retrieve, again) == 0
    message = error_line(retrieve, ["index", "--checkpoint", str(short_region_checkpoint), "--images", photos, "--out",
                                    str(tmp_path / "other.index")], capsys)
    assert "--detector" in message


def test_report_boxes_the_top_regions(short_region_checkpoint, region_data, detector, tmp_path):
    from tools.report import main as report
    data = tmp_path / "data" / "f30k_precomp"
    os.makedirs(data)
    photos = str(tmp_path / "photos")
    make_images(photos)
    for index in range(6):      # 10 images: the 4 of make_images and 6 copies
        shutil.copy(os.path.join(photos, "a.jpg"), os.path.join(photos, f"z{index}.jpg"))
    from tools.extract_regions import main as extract
    assert run_cli(extract, ["--detector", detector, "--images", photos, "--out", str(data / "test_ims.npy"),
                             "--protocol", "lxmert", "--workers", "0"]) == 0
    shutil.copy(os.path.join(region_data[0], "f30k_precomp", "test_caps.txt"), data / "test_caps.txt")
    assert run_cli(report, ["--checkpoint", str(short_region_checkpoint), "--data_path", str(tmp_path / "data"),
                            "--data_name", "f30k_precomp", "--out", str(tmp_path / "report"), "--device", "cpu",
                            "--workers", "0"]) == 0
    page = open(tmp_path / "report" / "index.html").read()
    assert page.count("data:image/jpeg;base64") >= 10


def test_karpathy_split_to_precomp_for_test_py(short_region_checkpoint, image_data, detector, tmp_path):
    from cli.commands import evaluate
    from tools.karpathy_to_precomp import main as convert
    root, images, _ = image_data
    out = tmp_path / "data" / "f30k_precomp"
    assert run_cli(convert, ["--dataset", "f30k", "--ann_path", root, "--image_root", images, "--split", "test",
                             "--detector", detector, "--out_dir", str(out), "--protocol", "lxmert",
                             "--workers", "0"]) == 0
    assert np.load(out / "test_ims.npy").shape == (10, 36, 64)
    assert len(open(out / "test_caps.txt").read().splitlines()) == 50
    assert run_cli(lambda argv: evaluate(argv, "test"), ["--checkpoint", str(short_region_checkpoint), "--data_path",
                                                         str(tmp_path / "data"), "--workers", "0"]) == 0


def karpathy_argv(image_data, detector, out, *extra):
    root, images, _ = image_data
    return ["--dataset", "f30k", "--ann_path", root, "--image_root", images, "--split", "test", "--detector",
            detector, "--out_dir", str(out), "--protocol", "lxmert", "--workers", "0", *extra]


def test_karpathy_split_refused_before_anything_is_written(image_data, detector, tmp_path, capsys):
    """Every check comes first: a bad --detector, or an image listing or captions file that is not
    ours, is one line and leaves the folder as it was (a new one is not created)."""
    from tools.karpathy_to_precomp import main as convert
    fresh = tmp_path / "new" / "f30k_precomp"
    assert "--detector" in error_line(convert, karpathy_argv(image_data, str(tmp_path / "nodet"), fresh), capsys)
    assert not (tmp_path / "new").exists()
    os.makedirs(tmp_path / "elsewhere")      # an --image_root without the split's images: refused, not skipped
    argv = karpathy_argv(image_data, detector, fresh)
    argv[argv.index("--image_root") + 1] = str(tmp_path / "elsewhere")
    message = error_line(convert, argv, capsys)
    assert message.startswith(f"--image_root {tmp_path / 'elsewhere'}: 10 of the 10 images of split test do not exist")
    assert not (tmp_path / "new").exists()
    out = tmp_path / "data" / "f30k_precomp"
    os.makedirs(out)
    assert "--detector" in error_line(convert, karpathy_argv(image_data, str(tmp_path / "nodet"), out), capsys)
    assert os.listdir(out) == []
    for name in ("test_images.txt", "test_caps.txt"):
        (out / name).write_text("mine\n")
        for detector_given, extra, message in ((str(tmp_path / "nodet"), (), name),
                                               (detector, (), "exists already"),
                                               (detector, ("--overwrite",), "no command of ours wrote it")):
            assert message in error_line(convert, karpathy_argv(image_data, detector_given, out, *extra), capsys)
            assert os.listdir(out) == [name] and (out / name).read_text() == "mine\n"
        os.remove(out / name)


def test_karpathy_split_records_every_file_and_overwrite_replaces_them(image_data, detector, tmp_path):
    from outputs import manifest
    from tools.karpathy_to_precomp import main as convert
    out = tmp_path / "f30k_precomp"
    assert run_cli(convert, karpathy_argv(image_data, detector, out)) == 0
    assert manifest.read(str(out)) == {"test_images.txt": "karpathy_to_precomp.py",
                                       "test_caps.txt": "karpathy_to_precomp.py",
                                       "test_ims.npy": "extract_regions.py", "test_ims_boxes.npy": "extract_regions.py",
                                       "test_ims.json": "extract_regions.py"}
    listing = (out / "test_images.txt").read_text().splitlines()
    assert len(listing) == 10 and all(os.path.isabs(line) for line in listing)
    assert run_cli(convert, karpathy_argv(image_data, detector, out, "--overwrite")) == 0
    assert (out / "test_images.txt").read_text().splitlines() == listing
    assert len((out / "test_caps.txt").read_text().splitlines()) == 50
    assert sorted(os.listdir(out)) == sorted([manifest.MANIFEST, "test_images.txt", "test_caps.txt", "test_ims.npy",
                                              "test_ims_boxes.npy", "test_ims.json"])


def test_karpathy_split_stopped_then_resumed(image_data, detector, tmp_path, capsys, monkeypatch):
    """A stop leaves only the extractor's work folder (no listing, no captions yet); --resume
    continues and writes them all."""
    import signal
    from detector import extraction
    from outputs import manifest
    from tools.karpathy_to_precomp import main as convert
    out = tmp_path / "f30k_precomp"
    real = stop_at_second_batch(monkeypatch)
    assert run_cli(convert, karpathy_argv(image_data, detector, out, "--batch_size", "1")) == 128 + signal.SIGTERM
    assert "--resume" in capsys.readouterr().err
    assert not any(name.endswith(".txt") for name in os.listdir(out))
    monkeypatch.setattr(extraction, "extract", real)
    assert run_cli(convert, karpathy_argv(image_data, detector, out, "--resume")) == 0
    assert len((out / "test_caps.txt").read_text().splitlines()) == 50
    assert {"test_images.txt", "test_caps.txt"} <= set(manifest.owned(str(out), "karpathy_to_precomp.py"))
