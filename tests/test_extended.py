"""testall.py --extended (ECCV Caption and CxC metrics) and --save_ranks."""

import json
import os
import shutil

import numpy as np
import pytest

from conftest import REGION_DIM, error_line, run_cli
from cli.commands import evaluate, train
from demo.data import write_region_dataset
from errors import DataError
from evaluation.extended import load_annotations, positive_positions, query_metrics, row_ids

TESTALL = (lambda argv: evaluate(argv, "testall", coco_testall=True))


# ----------------------------------------------------------------------------- definitions on known rankings

def test_metrics_of_hand_made_rankings():
    sims = np.array([[0.9, 0.8, 0.7, 0.1],     # positives 0, 2: ranks 0 and 2
                     [0.9, 0.8, 0.7, 0.1],     # positives 1, 2: ranks 1 and 2
                     [0.5, 0.5, 0.5, 0.1]])    # positives 0, 2 tied with negative 1: ranks 1 and 2
    queries, items = np.array([10, 11, 12]), np.array([100, 101, 102, 103])
    metrics = query_metrics(sims, queries, items, {10: [100, 102], 11: [101, 102], 12: [100, 102]})
    # query 10: top-2 = [pos, neg]: R-P 1/2, mAP@R (1/1 + 0) / 2 = 1/2, R@1 1
    # query 11: top-2 = [neg, pos]: R-P 1/2, mAP@R (0 + 1/2) / 2 = 1/4, R@1 0
    # query 12: top-2 = [neg, pos]: as query 11
    assert metrics["r_precision"] == pytest.approx(100 * (0.5 + 0.5 + 0.5) / 3)
    assert metrics["map_at_r"] == pytest.approx(100 * (0.5 + 0.25 + 0.25) / 3)
    assert metrics["r1"] == pytest.approx(100 / 3) and metrics["queries"] == 3
    assert positive_positions(np.array([0.3, 0.3, 0.9]), np.array([0, 1])).tolist() == [1, 2]


# ----------------------------------------------------------------------------- id mapping, synthetic package files

@pytest.fixture
def synthetic_package(tmp_path):
    """The package's file formats for 4 images x 5 captions (image ids 7, 8, 9, 6)."""
    folder = tmp_path / "data"
    folder.mkdir()
    images = [7, 8, 9, 6]
    captions = {image: [1000 * image + k for k in range(5)] for image in images}
    test_ids = np.array([c for image in images for c in captions[image]], dtype=np.int64)
    np.save(folder / "coco_test_ids.npy", test_ids)
    to_image = {str(c): [image] for image in images for c in captions[image]}
    for name in ("original", "cxc", "eccv"):
        (folder / f"{name}_caption_to_image.json").write_text(json.dumps(to_image))
        (folder / f"{name}_image_to_caption.json").write_text(json.dumps({str(i): captions[i] for i in images}))
    return load_annotations(str(folder)), test_ids


def test_ids_of_rows_from_caption_or_image_ids(synthetic_package):
    annotations, test_ids = synthetic_package
    shuffled = test_ids.reshape(4, 5)[[2, 0, 3, 1]].reshape(-1)
    images, captions = row_ids(shuffled, 4, annotations, "ids.txt")
    assert images.tolist() == [9, 7, 6, 8] and captions.tolist() == shuffled.tolist()
    images, captions = row_ids(np.repeat([7, 8, 9, 6], 5), 4, annotations, "ids.txt")
    assert images.tolist() == [7, 8, 9, 6] and captions.tolist() == test_ids.tolist()
    assert row_ids(np.array([7, 8, 9, 6]), 4, annotations, "ids.txt")[1].tolist() == test_ids.tolist()


@pytest.mark.parametrize("ids,expected", [
    (lambda t: np.concatenate([t[:4], t[5:6], t[4:5], t[6:]]),  # row 0's fifth caption is image 8's
     "ids.txt: the 5 captions of row 0 belong to different COCO images ([7, 8])"),
    (lambda t: np.array([8, 7, 9, 6]),
     "ids.txt: the images are not in the order of eccv_caption's coco_test_ids.npy, so their captions cannot be "
     "identified; give a file of caption ids (--ids_file)"),
    (lambda t: np.array([7, 8, 9, 5]), "ids.txt: 1 image ids are not COCO 5K test images (e.g. 5)"),
    (lambda t: t[:7], "ids.txt has 7 ids for 4 images and 20 captions"),
    (lambda t: np.concatenate([t[:19], [424242]]), "ids.txt: 1 caption ids are not COCO 5K test captions (e.g. 424242)"),
])
def test_ids_that_do_not_resolve_exactly_are_refused(synthetic_package, ids, expected):
    annotations, test_ids = synthetic_package
    with pytest.raises(DataError) as error:
        row_ids(ids(test_ids), 4, annotations, "ids.txt")
    assert str(error.value) == expected


# ----------------------------------------------------------------------------- end to end, real package files

@pytest.fixture(scope="module")
def coco_layout(tmp_path_factory, tiny_bert):
    """Demo-style regions in the coco_precomp layout whose 5,000 testall images carry the real COCO
    test ids of the package (testall_ids.txt), and a short-trained cosine model."""
    root = tmp_path_factory.mktemp("coco_layout")
    write_region_dataset(str(root), {"train": 40, "dev": 5, "testall": 5000}, regions=3, dim=REGION_DIM, seed=9)
    shutil.move(str(root / "f30k_precomp"), str(root / "coco_precomp"))
    ids = load_annotations()["test_caption_ids"]
    (root / "coco_precomp" / "testall_ids.txt").write_text("\n".join(map(str, ids)) + "\n")
    out = root / "run"
    assert run_cli(train, ["--data_path", str(root), "--data_name", "coco_precomp", "--bert_path", tiny_bert,
                           "--img_dim", str(REGION_DIM), "--sim_head", "cosine", "--embed_size", "16",
                           "--batch_size", "20", "--max_steps", "2", "--workers", "0", "--device", "cpu",
                           "--output_dir", str(out)]) == 0
    return root, out / "checkpoint_last.pth"


@pytest.mark.slow
def test_testall_extended_reads_the_real_annotations_end_to_end(coco_layout, tmp_path, capsys):
    from eccv_caption._metrics import compute_eccv_metrics
    from evaluation.extended import extended_metrics
    root, checkpoint = coco_layout
    sims_path, ranks_path = tmp_path / "sims.npy", tmp_path / "ranks.json"
    capsys.readouterr()
    assert run_cli(TESTALL, ["--checkpoint", str(checkpoint), "--data_path", str(root), "--workers", "0",
                             "--extended", "--save_sims", str(sims_path), "--save_ranks", str(ranks_path)]) == 0
    printed = capsys.readouterr().out
    assert "ECCV Caption i2t: mAP@R" in printed and "(1261 queries)" in printed and "CxC R@1" in printed
    extended = json.loads(sims_path.with_suffix(".json").read_text())["metrics"]["extended"]
    assert extended["eccv"]["t2i"]["queries"] == 1332

    # the same numbers from the package's own ECCV function, on a tie-free copy (the demo's templated
    # captions tie, and the package breaks ties by position) with rankings long enough for every R
    sims = np.load(sims_path)
    noisy = sims + 1e-3 * np.random.default_rng(0).standard_normal(sims.shape).astype(np.float32)
    annotations = load_annotations()
    caption_ids = annotations["test_caption_ids"]
    image_ids = np.array([annotations["original"]["caption_to_image"][int(c)][0] for c in caption_ids[::5]])
    ours = extended_metrics(noisy, image_ids, caption_ids, annotations)
    for direction, matrix, queries, items, key in (
            ("i2t", noisy, image_ids, caption_ids, "image_to_caption"),
            ("t2i", noisy.T, caption_ids, image_ids, "caption_to_image")):
        gts = annotations["eccv"][key]
        row_of = {int(q): r for r, q in enumerate(queries)}
        retrieved = {q: items[np.argsort(-matrix[row_of[q]])[:200]].tolist() for q in gts}
        theirs = compute_eccv_metrics(retrieved, gts)
        assert ours["eccv"][direction]["map_at_r"] == pytest.approx(100 * theirs["eccv_map_at_r"], abs=1e-9)
        assert ours["eccv"][direction]["r_precision"] == pytest.approx(100 * theirs["eccv_rprecision"], abs=1e-9)
        assert ours["eccv"][direction]["r1"] == pytest.approx(100 * theirs["eccv_r1"], abs=1e-9)
        cxc = annotations["cxc"][key]
        top = items[matrix.argmax(1)]
        expected = np.mean([top[row_of[q]] in set(positives) for q, positives in cxc.items()])
        assert ours["cxc_r1"][direction] == pytest.approx(100 * expected, abs=1e-9)

    ranks = json.loads(ranks_path.read_text())
    assert len(ranks["i2t"]) == 5000 and len(ranks["t2i"]) == 25000
    sims = np.load(sims_path)
    first = ranks["t2i"][7]
    assert sims[first["top"][0], 7] == sims[:, 7].max() and len(first["top"]) == 10
    assert first["scores"] == sorted(first["scores"], reverse=True)


def test_extended_refuses_rows_without_ids(coco_layout, tmp_path, capsys):
    root, checkpoint = coco_layout
    copy = tmp_path / "data"
    shutil.copytree(root / "coco_precomp", copy / "coco_precomp")
    ids_file = copy / "coco_precomp" / "testall_ids.txt"
    os.remove(ids_file)
    assert error_line(TESTALL, ["--checkpoint", str(checkpoint), "--data_path", str(copy), "--workers", "0",
                                "--extended"], capsys) == (
        f"{ids_file} is missing: --extended needs the COCO ids of the rows (SCAN's testall_ids.txt, or a file of "
        "ids given with --ids_file)")


def test_extended_without_the_package_is_one_line(monkeypatch, coco_layout, capsys):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "eccv_caption" else real(name, *a))
    root, checkpoint = coco_layout
    assert error_line(TESTALL, ["--checkpoint", str(checkpoint), "--data_path", str(root), "--extended"], capsys) == \
        "--extended needs the eccv_caption package for its annotation files: pip install --no-deps eccv_caption==0.1.0"


def test_raw_coco_captions_take_their_ids_from_the_annotation_file(tmp_path, synthetic_package):
    """Karpathy-style COCO JSON with sentences[].id: the ids resolve through the same checks."""
    from datasets.karpathy import caption_ids
    annotations, test_ids = synthetic_package
    images = [{"file_name": f"COCO_val2014_{i}.jpg",
               "sentences": [{"raw": "x", "id": int(c)} for c in test_ids[5 * i: 5 * i + 5]] + [{"raw": "y", "id": 1}]}
              for i in range(4)]
    (tmp_path / "testall_coco.json").write_text(json.dumps({"images": images}))
    ids = caption_ids("coco", str(tmp_path), "testall")
    assert ids == test_ids.tolist()                   # the sixth caption of an image is not evaluated
    assert row_ids(np.array(ids), 4, annotations, "testall_coco.json")[0].tolist() == [7, 8, 9, 6]
    del images[0]["sentences"][0]["id"]
    (tmp_path / "testall_coco.json").write_text(json.dumps({"images": images}))
    assert caption_ids("coco", str(tmp_path), "testall") is None
