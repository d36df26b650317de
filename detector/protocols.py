"""Two ways to turn an image into R regions with the same network (docs/MODELS.md, "Region features").

`butd` (default): the Caffe extraction of bottom-up attention that made SCAN's features
(peteanderson80/bottom-up-attention, tools/generate_tsv.py, 36 fixed boxes). `lxmert`: what LXMERT's
reference extractor (HuggingFace research_projects/lxmert) gives with the same weights and
config.yaml, except its two bugs (RGB fed to BGR means; no fallback when no NMS threshold keeps
MIN_DETECTIONS boxes).

Each image is run through the network alone, at its own size: a batch never pads one image to
another's size, so --batch_size never changes a result.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .ops import decode_boxes, decode_boxes_caffe, nms, nms_per_class, resize_bilinear_scale

PROTOCOLS = ("butd", "lxmert")


@dataclass(frozen=True)
class Butd:
    """The Caffe test configuration of bottom-up attention (experiments/cfgs/faster_rcnn_end2end_resnet.yml,
    lib/fast_rcnn/config.py, tools/generate_tsv.py); config.yaml does not hold these (it holds the
    detectron2 port's own 800 / 1333 test sizes)."""
    short_side: int = 600           # TEST.SCALES
    max_side: int = 1000            # TEST.MAX_SIZE
    pre_nms: int = 6000             # TEST.RPN_PRE_NMS_TOP_N
    post_nms: int = 300             # TEST.RPN_POST_NMS_TOP_N
    rpn_nms: float = 0.7            # TEST.RPN_NMS_THRESH
    min_size: float = 16.0          # TEST.RPN_MIN_SIZE, in original-image pixels
    class_nms: float = 0.3          # TEST.NMS, per class on the proposals
    anchor_base: int = 16           # generate_anchors(base_size=16)


BUTD = Butd()


class Unusable(Exception):
    """An image the protocol cannot process (a side would resize to nothing); it is skipped."""


MIN_SIDE = 16      # one cell of the stride-16 feature map; the stem's unpadded max-pool needs 5 pixels


def _check_size(height: int, width: int, raw_h: int, raw_w: int) -> None:
    if min(height, width) < MIN_SIDE:
        raise Unusable(f"{raw_w} x {raw_h} pixels: too thin for the detector (resized, a side would be "
                       f"{min(height, width)} pixels; it needs {MIN_SIDE})")


@dataclass
class Regions:
    features: np.ndarray        # R x width, float32, zero rows after `count`
    boxes: np.ndarray           # R x 4, x1 y1 x2 y2 in original pixels
    count: int                  # real regions
    note: str | None = None     # what happened when the protocol's rule could not be met


def to_bgr(rgb: np.ndarray, input_format: str) -> np.ndarray:
    """An RGB uint8 H x W x 3 array in the channel order config.yaml's INPUT.FORMAT names."""
    return np.ascontiguousarray(rgb[:, :, ::-1]) if input_format == "BGR" else rgb


# ---------------------------------------------------------------- lxmert (detectron2 port) ----

def lxmert_size(height: int, width: int, short: int, longest: int) -> tuple[int, int]:
    """ResizeShortestEdge of the reference: (new height, new width)."""
    scale = short * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = short, scale * width
    else:
        new_h, new_w = scale * height, short
    if max(new_h, new_w) > longest:
        scale = longest * 1.0 / max(new_h, new_w)
        new_h = new_h * scale
        new_w = new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def grid_anchors(cell: torch.Tensor, height: int, width: int, stride: int, offset: float) -> torch.Tensor:
    """(H * W * A, 4): the cell anchors shifted to each cell's corner (+ offset * stride)."""
    xs = torch.arange(offset * stride, width * stride, step=stride, dtype=torch.float32, device=cell.device)
    ys = torch.arange(offset * stride, height * stride, step=stride, dtype=torch.float32, device=cell.device)
    shift_y, shift_x = torch.meshgrid(ys, xs, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4)


def clip_(boxes: torch.Tensor, height, width) -> torch.Tensor:
    boxes[:, 0].clamp_(min=0, max=width)
    boxes[:, 1].clamp_(min=0, max=height)
    boxes[:, 2].clamp_(min=0, max=width)
    boxes[:, 3].clamp_(min=0, max=height)
    return boxes


def flat_rpn(logits: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(H * W * A) logits and (H * W * A, 4) deltas of one image, anchors fastest."""
    anchors, height, width = logits.shape[-3:]
    return (logits[0].permute(1, 2, 0).reshape(-1),
            deltas[0].view(anchors, 4, height, width).permute(2, 3, 0, 1).reshape(-1, 4))


@torch.inference_mode()
def extract_lxmert(model, rgb: np.ndarray, regions: int) -> Regions:
    cfg = model.cfg
    device = next(model.parameters()).device
    pixels = torch.as_tensor(to_bgr(rgb, cfg.input_format)).to(device).float()
    raw_h, raw_w = pixels.shape[:2]
    new_h, new_w = lxmert_size(raw_h, raw_w, cfg.min_size_test, cfg.max_size_test)
    _check_size(new_h, new_w, raw_h, raw_w)
    image = F.interpolate(pixels.permute(2, 0, 1).unsqueeze(0), (new_h, new_w), mode="bilinear",
                          align_corners=False)
    mean = torch.tensor(cfg.pixel_mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.pixel_std, device=device).view(1, 3, 1, 1)
    image = (image - mean) / std
    res4 = model.features(image)
    logits, deltas = flat_rpn(*model.rpn(res4))
    anchors = grid_anchors(model.cell_anchors, res4.shape[2], res4.shape[3], model.feature_stride, cfg.anchor_offset)
    proposals = decode_boxes(deltas, anchors, cfg.rpn_bbox_weights)
    top = torch.sort(logits, descending=True, stable=True).indices[:min(cfg.rpn_pre_nms_topk, len(logits))]
    proposals, scores = clip_(proposals[top], new_h, new_w), logits[top]
    sides = (proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1])
    alive = (sides[0] > cfg.rpn_min_size) & (sides[1] > cfg.rpn_min_size)
    proposals, scores = proposals[alive], scores[alive]
    proposals = proposals[nms(proposals, scores, cfg.rpn_nms_thresh, limit=cfg.rpn_post_nms_topk)]
    rois = torch.cat([proposals.new_zeros((len(proposals), 1)), proposals], dim=1)
    features = model.region_features(res4, rois)
    class_logits, box_deltas = model.predict(features)
    boxes = decode_boxes(box_deltas, proposals, cfg.box_weights)
    classes = boxes.shape[1] // 4
    boxes = clip_(boxes.reshape(-1, 4), new_h, new_w).view(-1, classes, 4)
    probs = F.softmax(class_logits, dim=-1)[:, :-1]
    best, best_class = probs.max(1)
    chosen = boxes[torch.arange(len(boxes), device=device), best_class if classes > 1 else 0]
    most, least = regions, min(cfg.min_detections, regions)
    keep, note = None, None
    for threshold in cfg.nms_thresh_test:
        keep = nms(chosen, best, threshold)[:most]
        if least <= len(keep) <= most:
            break
    else:
        note = (f"no NMS threshold of ROI_HEADS.NMS_THRESH_TEST kept {least} regions; the last one's "
                f"{len(keep)} are written")
    scale = torch.true_divide(torch.tensor([raw_h, raw_w]), torch.tensor([new_h, new_w])).to(device)
    out_boxes = chosen[keep].clone()
    out_boxes[:, 0::2] *= scale[1]
    out_boxes[:, 1::2] *= scale[0]
    return _padded(features[keep], out_boxes, regions, note)


def _padded(features: torch.Tensor, boxes: torch.Tensor, regions: int, note) -> Regions:
    count = len(features)
    out_f = np.zeros((regions, features.shape[1]), dtype=np.float32)
    out_b = np.zeros((regions, 4), dtype=np.float32)
    out_f[:count] = features.float().cpu().numpy()
    out_b[:count] = boxes.float().cpu().numpy()
    return Regions(out_f, out_b, count, note)


# ---------------------------------------------------------------- butd (Caffe original) -------

def caffe_anchor(size: float, ratio: float, base: int = 16) -> list[float]:
    """py-faster-rcnn generate_anchors for one (size, ratio): the base box [0, 0, base-1, base-1]
    given the ratio's area-preserving shape (integer-rounded, halves to even as numpy's round), then
    scaled by size / base about its centre; the +1 box convention throughout."""
    w = h = float(base)
    x_ctr, y_ctr = 0.5 * (w - 1), 0.5 * (h - 1)
    ws = float(np.round(math.sqrt(w * h / ratio)))
    hs = float(np.round(ws * ratio))
    scale = size / base
    ws, hs = ws * scale, hs * scale
    return [x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)]


def caffe_cell_anchors(sizes, ratios, base: int = 16) -> torch.Tensor:
    """The Caffe anchors in the network's channel order (for each size, for each ratio)."""
    return torch.tensor([caffe_anchor(size, ratio, base) for size in sizes for ratio in ratios], dtype=torch.float32)


def caffe_anchors_like(cell: torch.Tensor, base: int = 16) -> torch.Tensor:
    """The Caffe anchor of each stored cell anchor's (size, ratio), channel for channel: the weights'
    own table (`cell_anchors.0`) says which shape each RPN output channel was trained for, whatever
    order a conversion left them in; size = sqrt(area), ratio = h / w."""
    rows = []
    for x1, y1, x2, y2 in cell.double().cpu().tolist():
        w, h = x2 - x1, y2 - y1
        rows.append(caffe_anchor(float(round(math.sqrt(w * h))), round(h / w, 4), base))
    return torch.tensor(rows, dtype=torch.float32, device=cell.device)


def butd_scale(height: int, width: int, butd: Butd = BUTD) -> float:
    short, longest = min(height, width), max(height, width)
    scale = float(butd.short_side) / float(short)
    if np.round(scale * longest) > butd.max_side:
        scale = float(butd.max_side) / float(longest)
    return scale


def butd_rpn(logits, deltas, anchors, im_h, im_w, im_scale, butd: Butd = BUTD) -> torch.Tensor:
    """lib/rpn/proposal_layer.py at test time: decode every anchor (Caffe convention), clip to
    [0, W - 1] x [0, H - 1], drop boxes under min_size * im_scale, keep the pre_nms best, NMS
    (+1 areas), keep post_nms. logits (H*W*A,), deltas (H*W*A, 4) in anchor-fastest order."""
    proposals = decode_boxes_caffe(deltas, anchors)
    proposals[:, 0::2] = proposals[:, 0::2].clamp(min=0, max=im_w - 1)
    proposals[:, 1::2] = proposals[:, 1::2].clamp(min=0, max=im_h - 1)
    min_size = butd.min_size * im_scale
    ws = proposals[:, 2] - proposals[:, 0] + 1
    hs = proposals[:, 3] - proposals[:, 1] + 1
    alive = torch.nonzero((ws >= min_size) & (hs >= min_size)).squeeze(1)
    proposals, logits = proposals[alive], logits[alive]
    order = torch.sort(logits, descending=True, stable=True).indices[:butd.pre_nms]
    proposals, logits = proposals[order], logits[order]
    return proposals[nms(proposals, logits, butd.rpn_nms, limit=butd.post_nms, plus_one=True)]


def butd_select(probs: torch.Tensor, boxes: torch.Tensor, regions: int, butd: Butd = BUTD) -> torch.Tensor:
    """generate_tsv.py: per foreground class, NMS (+1 areas) of the proposal boxes by that class's
    score; a proposal's max_conf is its best score among the classes where it survived (0 if none);
    the `regions` proposals of highest max_conf are kept (ties: lower index first), by max_conf."""
    keep = nms_per_class(boxes, probs, butd.class_nms, plus_one=True)          # N x C
    max_conf = torch.where(keep, probs, torch.zeros_like(probs)).amax(dim=1).clamp(min=0)
    return torch.sort(max_conf, descending=True, stable=True).indices[:regions]


@torch.inference_mode()
def extract_butd(model, rgb: np.ndarray, regions: int, butd: Butd = BUTD) -> Regions:
    cfg = model.cfg
    device = next(model.parameters()).device
    pixels = torch.as_tensor(to_bgr(rgb, cfg.input_format)).to(device).float()
    raw_h, raw_w = pixels.shape[:2]
    mean = torch.tensor(cfg.pixel_mean, device=device, dtype=torch.float32)
    std = torch.tensor(cfg.pixel_std, device=device, dtype=torch.float32)
    centred = ((pixels - mean) / std).permute(2, 0, 1)          # means subtracted before resizing
    im_scale = butd_scale(raw_h, raw_w, butd)
    _check_size(int(round(raw_h * im_scale)), int(round(raw_w * im_scale)), raw_h, raw_w)
    image = resize_bilinear_scale(centred, im_scale).unsqueeze(0)
    im_h, im_w = image.shape[2:]
    res4 = model.features(image)
    logits, deltas = flat_rpn(*model.rpn(res4))
    cell = caffe_anchors_like(model.cell_anchors, butd.anchor_base)
    anchors = grid_anchors(cell, res4.shape[2], res4.shape[3], model.feature_stride, 0.0)
    proposals = butd_rpn(logits, deltas, anchors, im_h, im_w, im_scale, butd)
    rois = torch.cat([proposals.new_zeros((len(proposals), 1)), proposals], dim=1)
    features = model.region_features(res4, rois)
    class_logits, _ = model.predict(features)
    probs = F.softmax(class_logits, dim=-1)[:, :-1]                  # background is the last column
    boxes = proposals / im_scale
    chosen = butd_select(probs, boxes, regions, butd)
    note = None if len(chosen) == regions else f"only {len(chosen)} proposals survived the RPN"
    return _padded(features[chosen], boxes[chosen], regions, note)


def extract(model, rgb: np.ndarray, regions: int, protocol: str) -> Regions:
    return (extract_butd if protocol == "butd" else extract_lxmert)(model, rgb, regions)
