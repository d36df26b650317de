"""detector/: config reading, strict loading, NMS and RoI pooling against hand-checked cases, the
lxmert protocol against an independent reference (tests/detector_reference.py), and each step of
the butd protocol on cases worked out by hand from the Caffe code."""

import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detector import ops
from detector.config import parse_config, read_config
from detector.images import Unreadable, list_images, read_rgb
from detector.model import FasterRCNN, load_detector
from detector.protocols import (butd_rpn, butd_scale, butd_select, caffe_anchor, caffe_cell_anchors,
                                extract, grid_anchors, lxmert_size)
from detector.testing import config_dict, full, write_detector
from errors import CheckpointError, ConfigError, DataError
from tests.detector_reference import nms_loop, reference_extract, roi_pool_loop


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_detector(str(tmp_path_factory.mktemp("detector")), config_dict(post_nms=48), seed=3)
    model, cfg = load_detector(folder)
    return folder, model, config_dict(post_nms=48)


def make_images(folder: str) -> dict:
    """JPEG, PNG, grayscale and EXIF-rotated images of different sizes, with structure (blocks of
    colour) so proposals differ."""
    rng = np.random.RandomState(7)

    def picture(h, w):
        base = rng.rand(h // 8 + 1, w // 8 + 1, 3) * 255
        return np.kron(base, np.ones((8, 8, 1)))[:h, :w].astype(np.uint8)

    os.makedirs(folder, exist_ok=True)
    paths = {}
    Image.fromarray(picture(100, 140)).save(os.path.join(folder, "a.jpg"), quality=95)
    Image.fromarray(picture(130, 90)).save(os.path.join(folder, "b.png"))
    Image.fromarray(picture(96, 96)[:, :, 0]).save(os.path.join(folder, "c_gray.png"))
    rotated = Image.fromarray(picture(80, 150))
    exif = rotated.getexif()
    exif[0x0112] = 6                  # rotate 90 degrees clockwise to display
    rotated.save(os.path.join(folder, "d_exif.jpg"), exif=exif, quality=95)
    for name in ("a.jpg", "b.png", "c_gray.png", "d_exif.jpg"):
        paths[name] = os.path.join(folder, name)
    return paths


# ------------------------------------------------------------------------------ config ----

def test_config_reads_both_layouts_and_refuses_missing_keys(tmp_path):
    data = config_dict()
    cfg = parse_config(data)
    assert cfg.num_classes == 5 and cfg.nms_thresh_test == (0.3, 0.5, 0.7) and cfg.anchor_sizes == (32, 64, 128)
    nested = copy.deepcopy(data)
    nested["MODEL"].update({key: nested.pop(key) for key in ("RESNETS", "RPN", "ROI_HEADS", "ROI_BOX_HEAD",
                                                             "ANCHOR_GENERATOR", "PROPOSAL_GENERATOR")})
    assert parse_config(nested) == cfg
    lower = {key.lower(): value for key, value in data.items()}
    assert parse_config(lower) == cfg
    broken = copy.deepcopy(data)
    del broken["RPN"]["POST_NMS_TOPK_TEST"]
    with pytest.raises(ConfigError, match="RPN.POST_NMS_TOPK_TEST is missing"):
        parse_config(broken)
    broken = copy.deepcopy(data)
    broken["RESNETS"]["DEPTH"] = 34
    with pytest.raises(ConfigError, match="RESNETS.DEPTH = 34"):
        parse_config(broken)
    broken = copy.deepcopy(data)
    broken["ROI_HEADS"]["NUM_CLASSES"] = "many"
    with pytest.raises(ConfigError, match="NUM_CLASSES = 'many' is not an integer"):
        parse_config(broken)
    (tmp_path / "config.yaml").write_text("MODEL: [unclosed\n")
    with pytest.raises(ConfigError, match="not a readable YAML file"):
        read_config(str(tmp_path))


def test_weights_load_strictly_with_lxmert_names(tmp_path):
    folder = write_detector(str(tmp_path / "det"))
    model, _ = load_detector(folder)
    keys = set(model.state_dict())
    for key in ("backbone.stem.conv1.weight", "backbone.stem.conv1.norm.running_var", "backbone.res2.0.shortcut.weight",
                "backbone.res4.5.conv3.norm.bias", "proposal_generator.anchor_generator.cell_anchors.0",
                "proposal_generator.rpn_head.objectness_logits.weight", "roi_heads.res5.2.conv2.weight",
                "roi_heads.box_predictor.cls_score.bias", "roi_heads.box_predictor.attr_score.weight"):
        assert key in keys
    state = torch.load(os.path.join(folder, "pytorch_model.bin"))
    without = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(without, os.path.join(folder, "pytorch_model.bin"))
    load_detector(folder)                            # num_batches_tracked may be absent
    del without["roi_heads.res5.1.conv1.weight"]
    torch.save(without, os.path.join(folder, "pytorch_model.bin"))
    with pytest.raises(CheckpointError, match="misses roi_heads.res5.1.conv1.weight"):
        load_detector(folder)
    (tmp_path / "det" / "pytorch_model.bin").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="is not a PyTorch weights file"):
        load_detector(folder)


def test_full_size_network_shapes():
    """ResNet-101 C4, 1,600 classes: the real file's shapes (built, not run)."""
    model = FasterRCNN(parse_config(full()))
    state = model.state_dict()
    assert state["roi_heads.box_predictor.cls_score.weight"].shape == (1601, 2048)
    assert state["roi_heads.box_predictor.bbox_pred.weight"].shape == (6400, 2048)
    assert state["roi_heads.box_predictor.attr_score.weight"].shape == (401, 512)
    assert state["proposal_generator.rpn_head.conv.weight"].shape == (512, 1024, 3, 3)
    assert state["proposal_generator.anchor_generator.cell_anchors.0"].shape == (12, 4)
    assert len([k for k in state if k.startswith("backbone.res4.") and k.endswith("conv1.weight")]) == 23
    assert model.roi_heads.res5[0].conv1.stride == (1, 1) and model.roi_heads.res5[2].conv2.dilation == (2, 2)


# --------------------------------------------------------------------------- box ops -----

def test_nms_hand_checked():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.95, 0.5, 0.7])
    # IoU(0,1) = 90/110 = 0.818, IoU(0,4) = 50/150 = 0.333, IoU(1,4) = 60/140 = 0.43
    assert ops.nms(boxes, scores, 0.5).tolist() == [2, 4, 3]
    assert ops.nms(boxes, scores, 0.9).tolist() == [2, 1, 4, 3]       # 0 = 2 exactly (IoU 1), 1 survives
    assert ops.nms(boxes, scores, 0.3).tolist() == [2, 3]          # 4 goes too (0.333 > 0.3)
    assert ops.nms(boxes, scores, 0.5, limit=2).tolist() == [2, 4]
    # equal scores: lower index first; IoU exactly at the threshold is kept (suppression is IoU > t)
    tie = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5.]])
    assert ops.nms(tie, torch.tensor([1.0, 1.0]), 0.5).tolist() == [0, 1]
    assert ops.nms(tie, torch.tensor([1.0, 1.0]), 0.49).tolist() == [0]
    # +1 convention (Caffe): [0,0,9,9] and [5,0,14,9] are 10 wide, overlap 5 -> 50 / 150
    caffe = torch.tensor([[0, 0, 9, 9], [5, 0, 14, 9.]])
    assert ops.nms(caffe, torch.tensor([1.0, 0.5]), 0.34, plus_one=True).tolist() == [0, 1]
    assert ops.nms(caffe, torch.tensor([1.0, 0.5]), 0.33, plus_one=True).tolist() == [0]
    assert ops.nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []


def test_nms_matches_the_loop_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 40 + 1], dim=1)
    scores = torch.rand(300, generator=g)
    for t in (0.3, 0.5, 0.7):
        assert ops.nms(boxes, scores, t).tolist() == nms_loop(boxes, scores, t).tolist()


def test_nms_per_class_hand_checked():
    boxes = torch.tensor([[0, 0, 9, 9], [1, 0, 10, 9], [30, 30, 39, 39.]])
    probs = torch.tensor([[0.6, 0.1], [0.5, 0.7], [0.2, 0.2]])
    keep = ops.nms_per_class(boxes, probs, 0.3, plus_one=True)
    # class 0: box 0 (0.6) suppresses box 1 (IoU 90/110); class 1: box 1 (0.7) suppresses box 0
    assert keep.tolist() == [[True, False], [False, True], [True, True]]


def test_roi_pool_hand_checked():
    feature = torch.arange(1, 26, dtype=torch.float32).view(1, 1, 5, 5)    # row r, col c -> 5r + c + 1
    # box (0,0)-(3,3) at scale 1 covers 4x4 cells; 2x2 bins of 2x2 cells
    out = ops.roi_max_pool(feature, torch.tensor([[0, 0, 0, 3, 3.]]), 2, 1.0)
    assert out[0, 0].tolist() == [[7, 9], [17, 19]]
    # rounding: 1.5 * 1 rounds half away from zero to 2 (torch.round would give 2, 2.5 -> 3 not 2)
    out = ops.roi_max_pool(feature, torch.tensor([[0, 2.5, 2.5, 4, 4]]), 1, 1.0)
    assert out[0, 0].tolist() == [[25]]
    out = ops.roi_max_pool(feature, torch.tensor([[0, 0.5, 0.5, 0.5, 0.5]]), 1, 1.0)   # rounds to cell 1
    assert out[0, 0].tolist() == [[7]]
    # a box beyond the map: bins clipped to it, empty bins are 0
    out = ops.roi_max_pool(feature, torch.tensor([[0, 4, 4, 9, 9.]]), 2, 1.0)
    assert out[0, 0].tolist() == [[25, 0], [0, 0]]
    # bins of a 3-cell box into 2: rows [0, 2) and [1, 3) overlap (floor / ceil)
    out = ops.roi_max_pool(feature, torch.tensor([[0, 0, 0, 2, 2.]]), 2, 1.0)
    assert out[0, 0].tolist() == [[7, 8], [12, 13]]


def test_roi_pool_matches_the_loop_on_random_boxes():
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(1, 6, 9, 13, generator=g)
    xy = torch.rand(40, 2, generator=g) * 200 - 20
    boxes = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 120], dim=1)
    rois = torch.cat([torch.zeros(40, 1), boxes], dim=1)
    ours = ops.roi_max_pool(feature, rois, 7, 1 / 16, chunk=16)
    assert torch.equal(ours, roi_pool_loop(feature[0], boxes, 7, 1 / 16))


# ---------------------------------------------------------------------------- lxmert ------

@pytest.mark.parametrize("regions", [10, 36])
def test_lxmert_equals_the_reference(tiny, tmp_path, regions):
    """One image at a time, and batched through tools/extract_regions.py (--batch_size 3)."""
    from cli.guard import run_guarded
    from tools.extract_regions import main
    folder, model, data = tiny
    state = torch.load(os.path.join(folder, "pytorch_model.bin"))
    images = make_images(str(tmp_path / "images"))
    out = str(tmp_path / "feats.npy")
    assert run_guarded(main, ["--detector", folder, "--images", str(tmp_path / "images"), "--out", out, "--protocol",
                              "lxmert", "--regions", str(regions), "--batch_size", "3", "--workers", "0"]) == 0
    batched, batched_boxes = np.load(out), np.load(str(tmp_path / "feats_boxes.npy"))
    for row, (name, path) in enumerate(sorted(images.items())):
        rgb = read_rgb(path)
        ours = extract(model, rgb, regions, "lxmert")
        features, boxes, count = reference_extract(state, data, rgb, regions)
        assert ours.count == count and count > 0, name
        scale = np.abs(features).max()
        for mine, mine_boxes in ((ours.features, ours.boxes), (batched[row], batched_boxes[row])):
            np.testing.assert_allclose(mine, features, atol=1e-4 * scale, rtol=0, err_msg=name)
            np.testing.assert_allclose(mine_boxes, boxes, atol=1e-2, rtol=0, err_msg=name)


def test_lxmert_resize_and_fallback(tiny):
    assert lxmert_size(480, 640, 800, 1333) == (800, 1067)
    assert lxmert_size(100, 1000, 800, 1333) == (133, 1333)
    folder, model, data = tiny
    rgb = np.full((90, 90, 3), 128, dtype=np.uint8)
    strict = copy.deepcopy(model)
    strict.cfg = parse_config({**data, "MIN_DETECTIONS": 40, "ROI_HEADS": {**data["ROI_HEADS"],
                                                                             "NMS_THRESH_TEST": [0.01]}})
    out = extract(strict, rgb, 40, "lxmert")
    assert out.note and "no NMS threshold" in out.note and out.count < 40
    assert not out.features[out.count:].any() and not out.boxes[out.count:].any()


def test_grid_anchors_at_the_cell_corner():
    cell = torch.tensor([[-8.0, -4.0, 8.0, 4.0]])
    anchors = grid_anchors(cell, 2, 3, 16, 0.0)
    assert anchors.tolist()[:4] == [[-8, -4, 8, 4], [8, -4, 24, 4], [24, -4, 40, 4], [-8, 12, 8, 20]]


# ------------------------------------------------------------------------------ butd ------

def test_butd_anchors_are_caffes():
    """generate_anchors(base 16, ratios 0.5 1 2, scales 8 16 32): the table py-faster-rcnn prints."""
    assert caffe_anchor(128, 0.5) == [-84, -40, 99, 55]
    assert caffe_anchor(256, 0.5) == [-176, -88, 191, 103]
    assert caffe_anchor(128, 1.0) == [-56, -56, 71, 71]
    assert caffe_anchor(512, 1.0) == [-248, -248, 263, 263]
    assert caffe_anchor(128, 2.0) == [-36, -80, 51, 95]
    assert caffe_anchor(512, 2.0) == [-168, -344, 183, 359]
    # the VG model's anchors (sizes 64..512) in the network's channel order: size-major
    cell = caffe_cell_anchors((64, 128), (0.5, 1.0, 2.0))
    assert cell[0].tolist() == [-38, -16, 53, 31] and cell[3].tolist() == [-84, -40, 99, 55]
    # read from the stored table, channel for channel, whatever its order
    from detector.model import cell_anchors
    from detector.protocols import caffe_anchors_like
    stored = cell_anchors((64, 128), (0.5, 1.0, 2.0))
    assert torch.equal(caffe_anchors_like(stored), cell)
    assert torch.equal(caffe_anchors_like(stored.flip(0)), cell.flip(0))
    # centred in the 16-px cell: centre 7.5 + 16 * column
    shifted = grid_anchors(cell[:1], 1, 2, 16, 0.0)
    assert shifted[1].tolist() == [-22, -16, 69, 31]


def test_butd_scale_rounds_like_caffe():
    assert butd_scale(480, 640) == 600 / 480                   # 800 <= 1000
    assert butd_scale(300, 1000) == 1000 / 1000                # 2000 > 1000: cap the longer side
    assert butd_scale(600, 1000) == 1.0
    assert butd_scale(600, 1001) == 1000 / 1001                # round(1001) > 1000


def test_butd_proposal_layer_hand_checked():
    # three anchors, zero deltas. py-faster-rcnn decodes with widths x2 - x1 + 1 but corners at
    # centre -/+ w / 2, so a zero delta moves x2 (y2) one pixel out: [-10, 20] -> [-10, 21]
    anchors = torch.tensor([[-10, -10, 20, 20], [0, 0, 9, 9], [2, 2, 40, 40.]])
    logits = torch.tensor([0.1, 0.9, 0.5])
    out = butd_rpn(logits, torch.zeros(3, 4), anchors, 30, 30, 1.0)
    # clipped to [0, 29]; box 1 becomes [0, 0, 10, 10], 11 px wide (< 16: dropped); box 2 [2, 2, 29, 29]
    # and box 0 [0, 0, 21, 21] overlap by 20 x 20: IoU = 400 / (784 + 484 - 400) = 0.46 < 0.7, both kept
    assert out.tolist() == [[2, 2, 29, 29], [0, 0, 21, 21]]
    # the minimum size is in original pixels: at scale 0.5 the 11-px box (22 px originally) survives
    out = butd_rpn(logits, torch.zeros(3, 4), anchors, 30, 30, 0.5)
    assert out.tolist()[0] == [0, 0, 10, 10]
    # deltas decode with +1 widths: box [0,0,9,9] (w 10, centre 5) moved by dx 0.1 -> centre 6
    moved = butd_rpn(torch.tensor([1.0]), torch.tensor([[0.1, 0, 0, 0]]), torch.tensor([[0, 0, 19, 19.]]), 30, 30,
                     1.0)
    assert moved.tolist() == [[2, 0, 22, 20]]


def test_butd_chooses_by_max_conf_whatever_the_score():
    # four proposals, two classes; 0 and 1 overlap (IoU > 0.3), 2 and 3 apart
    boxes = torch.tensor([[0, 0, 9, 9], [1, 1, 10, 10], [50, 50, 59, 59], [80, 80, 89, 89.]])
    probs = torch.tensor([[0.50, 0.10], [0.45, 0.40], [0.01, 0.02], [0.03, 0.001]])
    # class 0 keeps 0 (0.50), suppresses 1; class 1 keeps 1 (0.40) and suppresses 0
    # max_conf = [0.50, 0.40, 0.02, 0.03] -> order 0, 1, 3, 2 (all kept, however low)
    assert butd_select(probs, boxes, 4).tolist() == [0, 1, 3, 2]
    assert butd_select(probs, boxes, 2).tolist() == [0, 1]
    # a proposal suppressed in every class has max_conf 0 but is still taken when R needs it
    probs = torch.tensor([[0.5, 0.5], [0.4, 0.4], [0.3, 0.3], [0.2, 0.2]])
    boxes = torch.tensor([[0, 0, 9, 9], [0, 0, 9, 9], [50, 50, 59, 59], [50, 50, 59, 59.]])
    assert butd_select(probs, boxes, 4).tolist() == [0, 2, 1, 3]


def test_resize_like_opencv():
    image = torch.arange(16, dtype=torch.float32).view(1, 4, 4)
    # x2: source (d + 0.5) / 2 - 0.5: d = 0 -> -0.25 (clamped to 0), d = 1 -> 0.25, d = 7 -> 3.25 (last)
    up = ops.resize_bilinear_scale(image, 2.0)
    assert up.shape == (1, 8, 8)
    assert up[0, 0, :4].tolist() == [0.0, 0.25, 0.75, 1.25] and up[0, 0, 7].item() == 3.0
    down = ops.resize_bilinear_scale(image, 0.5)          # source 0.5, 2.5: means of pairs
    assert down[0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert ops.resize_bilinear_scale(torch.zeros(1, 5, 7), 1.5).shape == (1, 8, 10)   # round(7.5) = 8 (even)


def test_butd_end_to_end_gives_r_real_regions(tiny, tmp_path):
    _, model, _ = tiny
    rgb = read_rgb(make_images(str(tmp_path))["a.jpg"])
    out = extract(model, rgb, 10, "butd")
    assert out.count == 10 and out.note is None
    assert (out.boxes[:, 2] <= rgb.shape[1]).all() and (out.boxes[:, 3] <= rgb.shape[0]).all()
    assert (out.boxes[:, 0] >= 0).all() and np.abs(out.features).sum(axis=1).min() > 0


# ---------------------------------------------------------------------------- images ------

def test_images_upright_rgb_and_unreadable(tmp_path):
    paths = make_images(str(tmp_path))
    assert read_rgb(paths["d_exif.jpg"]).shape == (150, 80, 3)         # EXIF orientation 6 applied
    gray = read_rgb(paths["c_gray.png"])
    assert gray.shape == (96, 96, 3) and (gray[..., 0] == gray[..., 2]).all()
    Image.new("CMYK", (20, 10), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert read_rgb(str(tmp_path / "cmyk.jpg")).shape == (10, 20, 3)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    deep = read_rgb(str(tmp_path / "deep.png"))
    assert deep.shape == (8, 8, 3) and deep.max() == 255
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "cut.jpg").write_bytes(open(paths["a.jpg"], "rb").read()[:200])
    for name in ("empty.jpg", "cut.jpg"):
        with pytest.raises(Unreadable):
            read_rgb(str(tmp_path / name))
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        with pytest.raises(Unreadable, match="too large"):
            read_rgb(paths["a.jpg"])
    finally:
        Image.MAX_IMAGE_PIXELS = old
    names = [name for name, _ in list_images(str(tmp_path))]
    assert names == sorted(names) and "a.jpg" in names
    (tmp_path / "list.txt").write_text("b.png\na.jpg\n")
    assert [name for name, _ in list_images(str(tmp_path / "list.txt"))] == ["b.png", "a.jpg"]
    os.makedirs(tmp_path / "none")
    with pytest.raises(DataError, match="holds no image files"):
        list_images(str(tmp_path / "none"))


@pytest.mark.slow
def test_lxmert_equals_the_reference_at_full_size(tmp_path):
    """The real network's sizes (ResNet-101 C4, 1,600 classes, 400 attributes, RPN 512, 12
    anchors), random weights, a config of its own (short side 160, 40 proposals) on two images."""
    data = full(min_size=160, max_size=240, pre_nms=400, post_nms=40, min_det=10, max_det=36)
    folder = write_detector(str(tmp_path / "full"), data, seed=5)
    model, _ = load_detector(folder)
    state = torch.load(os.path.join(folder, "pytorch_model.bin"))
    paths = make_images(str(tmp_path / "images"))
    for name in ("a.jpg", "d_exif.jpg"):
        rgb = read_rgb(paths[name])
        for regions in (10, 36):
            ours = extract(model, rgb, regions, "lxmert")
            features, boxes, count = reference_extract(state, data, rgb, regions)
            assert ours.count == count and count > 0, name
            np.testing.assert_allclose(ours.features, features, atol=1e-4 * np.abs(features).max(), rtol=0)
            np.testing.assert_allclose(ours.boxes, boxes, atol=1e-2, rtol=0)


def caffe_nms(dets: np.ndarray, thresh: float) -> list:
    """py-faster-rcnn's py_cpu_nms (+1 areas), as generate_tsv.py calls it."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
        xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def test_butd_selection_equals_generate_tsv_loop():
    """generate_tsv.py's loop over classes, transcribed on numpy, against the vectorised selection."""
    rng = np.random.RandomState(4)
    xy = rng.rand(60, 2).astype(np.float32) * 200
    boxes = np.concatenate([xy, xy + rng.rand(60, 2).astype(np.float32) * 80 + 1], axis=1)
    probs = rng.dirichlet(np.ones(21), size=60).astype(np.float32)[:, :20]   # 20 foreground classes
    max_conf = np.zeros(60)
    for cls in range(20):
        scores = probs[:, cls]
        keep = np.array(caffe_nms(np.hstack((boxes, scores[:, None])).astype(np.float32), 0.3))
        max_conf[keep] = np.where(scores[keep] > max_conf[keep], scores[keep], max_conf[keep])
    expected = np.argsort(-max_conf, kind="stable")[:36]
    ours = butd_select(torch.from_numpy(probs), torch.from_numpy(boxes), 36)
    assert ours.tolist() == expected.tolist()


def test_reference_nms_variants_agree():
    from tests.detector_reference import nms_kept_loop
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(200, 2, generator=g) * 40 + 1], dim=1)
    scores = torch.rand(200, generator=g)
    assert nms_kept_loop(boxes, scores, 0.5).tolist() == nms_loop(boxes, scores, 0.5).tolist()
