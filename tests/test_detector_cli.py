"""tools/extract_regions.py: outputs and their record, skipped images, batch invariance, collisions,
one-line errors before any work, a stop by signal and --resume."""

import json
import os
import signal

import numpy as np
import pytest

from cli.guard import run_guarded
from detector import extraction
from detector.testing import config_dict, write_detector
from tests.test_detector import make_images
from tools import extract_regions

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    detector = write_detector(str(root / "det"), config_dict(min_size=64, max_size=96, post_nms=24), seed=1)
    images = str(root / "images")
    make_images(images)
    (root / "images" / "e_empty.jpg").write_bytes(b"")
    (root / "images" / "f_cut.png").write_bytes(open(os.path.join(images, "b.png"), "rb").read()[:100])
    return detector, images


def stop_at_second_batch(monkeypatch):
    """SIGTERM to this process as the extraction reaches its second batch; returns the real step."""
    real, calls = extraction.extract, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)
    monkeypatch.setattr(extraction, "extract", stopping)
    return real


def run(*argv):
    return run_guarded(extract_regions.main, list(argv))


def test_outputs_record_and_skipped(setup, tmp_path, capsys):
    detector, images = setup
    out = str(tmp_path / "feats.npy")
    assert run("--detector", detector, "--images", images, "--out", out, "--protocol", "lxmert", "--regions", "6",
               "--workers", "0", "--batch_size", "1") == 0
    features, boxes = np.load(out), np.load(str(tmp_path / "feats_boxes.npy"))
    record = json.load(open(tmp_path / "feats.json"))
    assert features.shape == (4, 6, 128) and features.dtype == np.float32 and boxes.shape == (4, 6, 4)
    assert {"format", "version", "protocol", "regions", "images", "skipped", "detector", "options"} <= set(record)
    assert record["format"] == "dimmatch-regions" and record["version"] == 1 and record["regions"] == 6
    assert [i["name"] for i in record["images"]] == ["a.jpg", "b.png", "c_gray.png", "d_exif.jpg"]
    assert record["images"][3]["width"] == 80 and record["images"][3]["height"] == 150    # upright
    assert os.path.isabs(record["images"][0]["path"]) and len(record["detector"]["sha256"]) == 64
    assert sorted(s["name"] for s in record["skipped"]) == ["e_empty.jpg", "f_cut.png"]
    captured = capsys.readouterr()
    assert "2 skipped" in captured.out and (captured.out + captured.err).count("skipping ") == 2
    assert not os.path.exists(out + ".partial")
    # batched, with decoding workers: the same rows
    again = str(tmp_path / "batched.npy")
    assert run("--detector", detector, "--images", images, "--out", again, "--protocol", "lxmert", "--regions", "6",
               "--workers", "1", "--batch_size", "3") == 0
    assert np.array_equal(np.load(again), features) and np.array_equal(np.load(str(tmp_path / "batched_boxes.npy")),
                                                                       boxes)
    # the same output again: refused before any work; --overwrite replaces it
    assert run("--detector", detector, "--images", images, "--out", out) == 2
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    (lambda d, i, t: ["--detector", str(t / "nowhere"), "--images", i, "--out", str(t / "x.npy")], "no such folder"),
    (lambda d, i, t: ["--detector", d, "--images", str(t / "none"), "--out", str(t / "x.npy")], "does not exist"),
    (lambda d, i, t: ["--detector", d, "--images", i, "--out", str(t / "x.h5")], "must end in .npy"),
    (lambda d, i, t: ["--detector", d, "--images", i, "--out", str(t / "x.npy"), "--regions", "0"], "--regions"),
    (lambda d, i, t: ["--detector", d, "--images", i, "--out", str(t / "x.npy"), "--resume"], "no stopped"),
    (lambda d, i, t: ["--detector", "someone/model", "--images", i, "--out", str(t / "x.npy")], "HuggingFace cache"),
    (lambda d, i, t: ["--detector", d, "--images", str(t / "empty"), "--out", str(t / "x.npy")], "no image files"),
])
def test_one_line_errors(setup, tmp_path, capsys, case, message):
    detector, images = setup
    os.makedirs(tmp_path / "empty")
    assert run(*case(detector, images, tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not os.path.exists(tmp_path / "x.npy")


def test_bad_config_is_one_line(setup, tmp_path, capsys):
    detector, images = setup
    bad = write_detector(str(tmp_path / "bad"), config_dict(min_size=64, max_size=96))
    text = open(os.path.join(bad, "config.yaml")).read().replace("NUM_CLASSES: 5", "NUM_CLASSE: 5")
    open(os.path.join(bad, "config.yaml"), "w").write(text)
    assert run("--detector", bad, "--images", images, "--out", str(tmp_path / "x.npy")) == 2
    assert "ROI_HEADS.NUM_CLASSES is missing" in capsys.readouterr().err


def test_stop_by_signal_then_resume(setup, tmp_path, capsys, monkeypatch):
    detector, images = setup
    whole = str(tmp_path / "whole.npy")
    assert run("--detector", detector, "--images", images, "--out", whole, "--regions", "5", "--workers", "0", "--protocol", "lxmert",
               "--batch_size", "1") == 0
    out = str(tmp_path / "feats.npy")
    real = stop_at_second_batch(monkeypatch)
    assert run("--detector", detector, "--images", images, "--out", out, "--regions", "5", "--workers", "0", "--protocol", "lxmert",
               "--batch_size", "1") == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "--resume" in err and not os.path.exists(out)
    state = np.load(out + ".partial/state.npy")
    assert (state == 1).sum() == 2
    monkeypatch.setattr(extraction, "extract", real)
    # a plain rerun is refused; a resume with other options is refused; the same command resumes
    assert run("--detector", detector, "--images", images, "--out", out, "--regions", "5") == 2
    assert "--resume" in capsys.readouterr().err
    assert run("--detector", detector, "--images", images, "--out", out, "--regions", "6", "--resume", "--protocol", "lxmert") == 2
    assert "regions differs" in capsys.readouterr().err
    assert run("--detector", detector, "--images", images, "--out", out, "--regions", "5", "--resume", "--protocol", "lxmert",
               "--workers", "0") == 0
    assert "resuming: 2 of 6 images done" in "".join(capsys.readouterr())
    assert np.array_equal(np.load(out), np.load(whole))
    assert json.load(open(tmp_path / "feats.json"))["images"] == json.load(open(tmp_path / "whole.json"))["images"]


@pytest.mark.slow
def test_torchrun_shards_into_one_output(setup, tmp_path):
    import subprocess
    import sys
    detector, images = setup
    single, sharded = str(tmp_path / "single.npy"), str(tmp_path / "sharded.npy")
    assert run("--detector", detector, "--images", images, "--out", single, "--protocol", "lxmert", "--regions", "5",
               "--workers", "0") == 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           os.path.join(root, "tools", "extract_regions.py"), "--detector", detector, "--images", images,
                           "--out", sharded, "--protocol", "lxmert", "--regions", "5", "--workers", "0"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = np.load(single), np.load(sharded)
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert json.load(open(tmp_path / "sharded.json"))["options"]["processes"] == 2
    assert json.load(open(tmp_path / "sharded.json"))["images"] == json.load(open(tmp_path / "single.json"))["images"]


def test_hub_name_from_the_cache(setup, tmp_path, monkeypatch):
    import shutil
    from huggingface_hub import constants
    detector, images = setup
    repo = tmp_path / "hub" / "models--unc-nlp--frcnn-vg-finetuned"
    os.makedirs(repo / "refs")
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(detector, repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = str(tmp_path / "hub.npy")
    assert run("--detector", "unc-nlp/frcnn-vg-finetuned", "--images", images, "--out", out, "--protocol", "lxmert",
               "--regions", "4", "--workers", "0") == 0
    assert json.load(open(tmp_path / "hub.json"))["detector"]["source"] == "unc-nlp/frcnn-vg-finetuned"


def test_an_image_too_thin_to_resize_is_skipped(setup, tmp_path, capsys):
    from PIL import Image
    detector, _ = setup
    folder = tmp_path / "thin"
    os.makedirs(folder)
    Image.new("RGB", (1, 400)).save(folder / "line.png")
    Image.new("RGB", (60, 50), (200, 30, 30)).save(folder / "ok.png")
    for protocol in ("lxmert", "butd"):
        out = str(tmp_path / f"{protocol}.npy")
        assert run("--detector", detector, "--images", str(folder), "--out", out, "--protocol", protocol,
                   "--regions", "3", "--workers", "0") == 0
        record = json.load(open(tmp_path / f"{protocol}.json"))
        assert [s["name"] for s in record["skipped"]] == ["line.png"] and "too thin" in record["skipped"][0]["reason"]


def test_garbage_weights_are_one_line_without_unsafe_advice(setup, tmp_path, capsys):
    import shutil
    detector, images = setup
    bad = tmp_path / "garbage"
    shutil.copytree(detector, bad)
    (bad / "pytorch_model.bin").write_bytes(np.random.default_rng(0).bytes(5000))
    assert run("--detector", str(bad), "--images", images, "--out", str(tmp_path / "x.npy")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad / 'pytorch_model.bin'} is not a PyTorch weights file (")
    assert len(err.splitlines()) == 1 and "weights_only" not in err and "will likely succeed" not in err


@pytest.mark.parametrize("options, message", [
    (["--workers", "100000"], "--workers must be at most"),
    (["--batch_size", "100000"], "--batch_size must be at most 4096"),
    (["--regions", "1000000000"], "--regions 1000000000: --protocol butd gives at most 300 regions an image "
                                  "(the BUTD protocol's TEST.RPN_POST_NMS_TOP_N)"),
    (["--regions", "25", "--protocol", "lxmert"], "at most 24 regions an image (RPN.POST_NMS_TOPK_TEST"),
])
def test_bounds_are_refused_before_any_work(setup, tmp_path, capsys, monkeypatch, options, message):
    """A huge --workers forked ~1,400 processes, a huge --regions sized a 1 TB FEATS.npy: both stop in one line."""
    import detector.model

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded: the bound was not checked first")

    monkeypatch.setattr(detector.model, "load_detector", no_work)
    detector_folder, images = setup
    assert run("--detector", detector_folder, "--images", images, "--out", str(tmp_path / "x.npy"), *options) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == []


SLOW_EXTRACTION = ("import sys, time; from detector import extraction; real = extraction.extract; "
                   "extraction.extract = lambda *a, **k: (time.sleep(0.7), real(*a, **k))[1]; "
                   "from cli.guard import run_guarded; from tools.extract_regions import main; "
                   "sys.exit(run_guarded(main, sys.argv[1:]))")


def test_sigterm_with_decoding_workers_stops_promptly_then_resumes(setup, tmp_path):
    """With DataLoader workers, SIGTERM stops the process (not only its workers) after the image at hand,
    with 128 + 15, and --resume completes the same output as an uninterrupted run."""
    import subprocess
    import sys
    import time
    detector, images = setup
    common = ["--detector", detector, "--images", images, "--regions", "5", "--protocol", "lxmert",
              "--batch_size", "1"]
    whole = str(tmp_path / "whole.npy")
    assert run(*common, "--out", whole, "--workers", "0") == 0
    out = str(tmp_path / "feats.npy")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACTION, *common, "--out", out, "--workers", "2"],
                               cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 50
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if np.load(out + ".partial/state.npy").any():
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and not os.path.exists(out)
    assert run(*common, "--out", out, "--workers", "2", "--resume") == 0
    assert np.array_equal(np.load(out), np.load(whole))
    assert json.load(open(tmp_path / "feats.json"))["images"] == json.load(open(tmp_path / "whole.json"))["images"]


def test_a_signal_after_the_last_image_still_writes_the_outputs(setup, tmp_path, monkeypatch):
    from detector.images import list_images
    detector, images = setup
    good = [name for name, _ in list_images(images)][:4]       # the images extract() is called for
    assert good == ["a.jpg", "b.png", "c_gray.png", "d_exif.jpg"]
    folder = tmp_path / "good"
    os.makedirs(folder)
    for name in good:
        os.symlink(os.path.join(images, name), folder / name)
    real, calls = extraction.extract, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == len(good):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(extraction, "extract", stopping)
    out = str(tmp_path / "feats.npy")
    assert run("--detector", detector, "--images", str(folder), "--out", out, "--regions", "4", "--workers", "0") == 0
    assert np.load(out).shape[0] == 4 and not os.path.exists(out + ".partial")


def test_resume_with_nothing_left_writes_the_outputs_at_once(setup, tmp_path, monkeypatch):
    detector, images = setup
    common = ["--detector", detector, "--images", images, "--regions", "4", "--workers", "0"]
    whole = str(tmp_path / "whole.npy")
    assert run(*common, "--out", whole) == 0
    real = extraction.Extraction.finish

    def interrupted(self, *args):
        raise KeyboardInterrupt("stopped while finishing")

    monkeypatch.setattr(extraction.Extraction, "finish", interrupted)
    out = str(tmp_path / "feats.npy")
    assert run(*common, "--out", out) != 0 and not os.path.exists(out)
    assert (np.load(out + ".partial/state.npy") != 0).all()
    monkeypatch.setattr(extraction.Extraction, "finish", real)
    monkeypatch.setattr(extraction, "extract", lambda *a, **k: pytest.fail("an image was extracted again"))
    assert run(*common, "--out", out, "--resume", "--workers", "2") == 0
    assert np.array_equal(np.load(out), np.load(whole)) and not os.path.exists(out + ".partial")


def test_a_list_naming_a_missing_file_is_refused_before_any_work(setup, tmp_path, capsys):
    """A typo in an explicit list is a mistake (the list, its line, the path), not a skipped image;
    an image that is there but cannot be decoded stays a skip with a warning."""
    detector, images = setup
    listing = tmp_path / "list.txt"
    listing.write_text(f"{os.path.join(images, 'a.jpg')}\n\nfew/nothere.jpg\n")
    out = tmp_path / "x.npy"
    assert run("--detector", detector, "--images", str(listing), "--out", str(out), "--workers", "0") == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --images {listing}:3: few/nothere.jpg does not exist (read as "
                   f"{tmp_path / 'few' / 'nothere.jpg'}: relative to the list's folder)")
    assert sorted(os.listdir(tmp_path)) == ["list.txt"]
    annotations = tmp_path / "dataset.json"
    annotations.write_text(json.dumps({"images": [{"filename": "x" * 100_000}]}))
    assert run("--detector", detector, "--images", str(annotations), "--out", str(out), "--workers", "0") == 2
    assert capsys.readouterr().err.strip() == (f"error: --images {annotations} is not a list of image paths (one a "
                                               "line): it looks like JSON (an annotation file? "
                                               "tools/karpathy_to_precomp.py reads those)")
    listing.write_text(f"{os.path.join(images, 'a.jpg')}\n{os.path.join(images, 'e_empty.jpg')}\n")
    assert run("--detector", detector, "--images", str(listing), "--out", str(out), "--protocol", "lxmert",
               "--regions", "6", "--workers", "0") == 0
    captured = capsys.readouterr()
    assert "1 skipped" in captured.out and (captured.out + captured.err).count("skipping ") == 1
    assert np.load(out).shape == (1, 6, 128)
