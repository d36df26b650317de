"""Box operations in plain PyTorch, with torchvision's semantics (no compiled extension).

* `nms(boxes, scores, threshold)`: torchvision.ops.nms — boxes (x1, y1, x2, y2), areas (x2 - x1) *
  (y2 - y1), a box is suppressed by a kept box of higher score when IoU > threshold; returns the
  kept indices by decreasing score (equal scores: lower index first). `plus_one=True` gives the
  Caffe / py-faster-rcnn variant (widths x2 - x1 + 1).
* `roi_max_pool(features, rois, size, scale)`: torchvision.ops.roi_pool — a box's corners
  are rounded half away from zero after scaling, its extent is end - start + 1 (at least 1), bin
  (i, j) covers rows floor(i * h / size) .. ceil((i + 1) * h / size) - 1 from the start, clipped
  to the map; an empty bin is 0. Vectorised over boxes and bins: every bin is the max of four
  blocks read from a sparse table of block maxima, in chunks of boxes to bound memory.
* `decode_boxes`: detectron2's Box2BoxTransform.apply_deltas (weights, dw/dh clamped at
  log(1000 / 16)); `decode_boxes_caffe`: py-faster-rcnn's bbox_transform_inv (+1 widths, no clamp).
"""

import math

import torch

SCALE_CLAMP = math.log(1000.0 / 16)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, plus_one: bool = False) -> torch.Tensor:
    """IoU of every box of `a` (N x 4) with every box of `b` (M x 4), computed as torchvision's NMS
    kernel does (inter / (area_a + area_b - inter))."""
    one = 1.0 if plus_one else 0.0
    area_a = (a[:, 2] - a[:, 0] + one) * (a[:, 3] - a[:, 1] + one)
    area_b = (b[:, 2] - b[:, 0] + one) * (b[:, 3] - b[:, 1] + one)
    left = torch.maximum(a[:, None, 0], b[None, :, 0])
    top = torch.maximum(a[:, None, 1], b[None, :, 1])
    right = torch.minimum(a[:, None, 2], b[None, :, 2])
    bottom = torch.minimum(a[:, None, 3], b[None, :, 3])
    inter = (right - left + one).clamp(min=0) * (bottom - top + one).clamp(min=0)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, limit: int | None = None,
        plus_one: bool = False) -> torch.Tensor:
    """Indices kept by greedy NMS, by decreasing score; with `limit`, only the first `limit` of
    them (the same as cutting the full result: kept boxes come in score order)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.device.type != "cpu":       # the scan reads one flag per box: no device round trip each time
        return nms(boxes.cpu(), scores.cpu(), threshold, limit, plus_one).to(boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    count = len(order)
    limit = count if limit is None else limit
    removed = torch.zeros(count, dtype=torch.bool, device=boxes.device)
    kept = []
    # one IoU row per kept box, in blocks: the greedy scan is sequential, its rows are not
    block = 256
    rows = None
    for i in range(count):
        if i % block == 0:
            rows = None
        if removed[i]:
            continue
        kept.append(i)
        if len(kept) >= limit:
            break
        if rows is None:
            rows = pairwise_iou(ordered[i:i + block], ordered, plus_one)
            base = i
        removed |= rows[i - base] > threshold
    return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


def nms_per_class(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, plus_one: bool = False) -> torch.Tensor:
    """Greedy NMS of the same N boxes under each of C score columns (scores N x C), all classes at
    once: a boolean N x C mask of the boxes each class keeps (bottom-up-attention's per-class NMS of
    the proposals, generate_tsv.py)."""
    count, classes = scores.shape
    iou = pairwise_iou(boxes, boxes, plus_one) > threshold              # N x N
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices   # N x C
    removed = torch.zeros(classes, count, dtype=torch.bool, device=boxes.device)
    keep = torch.zeros(classes, count, dtype=torch.bool, device=boxes.device)
    columns = torch.arange(classes, device=boxes.device)
    for step in range(count):
        candidate = order[step]                                         # C
        alive = ~removed[columns, candidate]
        keep[columns, candidate] = alive
        removed |= iou[candidate] & alive[:, None]
    return keep.t()


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_max_pool(features: torch.Tensor, rois: torch.Tensor, size: int, scale: float,
                 chunk: int = 32) -> torch.Tensor:
    """features (N, C, H, W); rois (K, 5): (image index, x1, y1, x2, y2) -> (K, C, size, size).

    Bins are cut exactly as torchvision's kernel cuts them; the max over a bin comes from a 2-D
    sparse table of the maps (the max over every 2^i x 2^j block, for the block sizes the bins need):
    four overlapping blocks cover any bin, so each bin is 4 reads of C values, whatever its size."""
    count = len(rois)
    batch_size, channels, height, width = features.shape
    out = features.new_zeros((count, channels, size, size))
    if count == 0:
        return out
    dtype, device = features.dtype, features.device
    rois = rois.to(dtype)
    start_w = round_half_away(rois[:, 1] * scale).long()
    start_h = round_half_away(rois[:, 2] * scale).long()
    end_w = round_half_away(rois[:, 3] * scale).long()
    end_h = round_half_away(rois[:, 4] * scale).long()
    roi_w = torch.clamp(end_w - start_w + 1, min=1)
    roi_h = torch.clamp(end_h - start_h + 1, min=1)
    bins = torch.arange(size, device=device, dtype=dtype)
    bin_h = roi_h.to(dtype) / size                            # in the feature dtype, as torchvision's kernel
    bin_w = roi_w.to(dtype) / size
    h0 = (torch.floor(bins[None] * bin_h[:, None]).long() + start_h[:, None]).clamp(0, height)
    h1 = (torch.ceil((bins[None] + 1) * bin_h[:, None]).long() + start_h[:, None]).clamp(0, height)
    w0 = (torch.floor(bins[None] * bin_w[:, None]).long() + start_w[:, None]).clamp(0, width)
    w1 = (torch.ceil((bins[None] + 1) * bin_w[:, None]).long() + start_w[:, None]).clamp(0, width)
    len_h, len_w = h1 - h0, w1 - w0                               # K x size each
    levels_h = int(torch.log2(len_h.max().clamp(min=1).to(torch.float64)).floor()) + 1
    levels_w = int(torch.log2(len_w.max().clamp(min=1).to(torch.float64)).floor()) + 1
    table = _block_max_table(features.permute(0, 2, 3, 1), levels_h, levels_w)   # Lh, Lw, N, H, W, C
    level_h = torch.log2(len_h.clamp(min=1).to(torch.float64)).floor().long()
    level_w = torch.log2(len_w.clamp(min=1).to(torch.float64)).floor().long()
    far_h = (h1 - (1 << level_h)).clamp(min=0)
    far_w = (w1 - (1 << level_w)).clamp(min=0)
    batch = rois[:, 0].long()
    for first in range(0, count, chunk):
        part = slice(first, min(count, first + chunk))
        k = part.stop - part.start
        lh = level_h[part][:, :, None].expand(k, size, size)
        lw = level_w[part][:, None, :].expand(k, size, size)
        b = batch[part][:, None, None].expand(k, size, size)
        ys = (h0[part][:, :, None].expand(k, size, size), far_h[part][:, :, None].expand(k, size, size))
        xs = (w0[part][:, None, :].expand(k, size, size), far_w[part][:, None, :].expand(k, size, size))
        cells = None
        for y in ys:
            for x in xs:
                value = table[lh, lw, b, y.clamp(max=height - 1), x.clamp(max=width - 1)]   # k, size, size, C
                cells = value if cells is None else torch.maximum(cells, value)
        empty = (len_h[part] <= 0)[:, :, None] | (len_w[part] <= 0)[:, None, :]
        cells = torch.where(empty[..., None], torch.zeros((), dtype=dtype, device=device), cells)
        out[part] = cells.permute(0, 3, 1, 2)
    return out


def _block_max_table(maps: torch.Tensor, levels_h: int, levels_w: int) -> torch.Tensor:
    """maps (N, H, W, C) -> (levels_h, levels_w, N, H, W, C): entry [i, j, n, y, x] is the max of
    maps[n, y : y + 2^i, x : x + 2^j] (blocks cut at the border)."""
    rows = [maps]
    for i in range(1, levels_h):
        step, last = 1 << (i - 1), rows[-1]
        grown = last.clone()
        grown[:, :-step] = torch.maximum(last[:, :-step], last[:, step:])
        rows.append(grown)
    table = []
    for row in rows:
        columns = [row]
        for j in range(1, levels_w):
            step, last = 1 << (j - 1), columns[-1]
            grown = last.clone()
            grown[:, :, :-step] = torch.maximum(last[:, :, :-step], last[:, :, step:])
            columns.append(grown)
        table.append(torch.stack(columns))
    return torch.stack(table)


def _corners(ctr_x, ctr_y, width, height, like: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4k) as x1, y1, x2, y2 from their centres and sizes (N, k): both decoders end so."""
    out = torch.empty_like(like)
    out[:, 0::4] = ctr_x - 0.5 * width
    out[:, 1::4] = ctr_y - 0.5 * height
    out[:, 2::4] = ctr_x + 0.5 * width
    out[:, 3::4] = ctr_y + 0.5 * height
    return out


def decode_boxes(deltas: torch.Tensor, boxes: torch.Tensor, weights) -> torch.Tensor:
    """detectron2 Box2BoxTransform.apply_deltas: deltas (N, 4k), boxes (N, 4) -> (N, 4k)."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    return _corners(pred_ctr_x, pred_ctr_y, pred_w, pred_h, deltas)


def decode_boxes_caffe(deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """py-faster-rcnn bbox_transform_inv (bottom-up-attention's proposal layer): widths x2 - x1 + 1,
    centres x1 + 0.5 w, corners centre -/+ 0.5 w, no weights, no clamp."""
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0] + 1.0
    heights = boxes[:, 3] - boxes[:, 1] + 1.0
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    pred_ctr_x = deltas[:, 0::4] * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = deltas[:, 1::4] * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(deltas[:, 2::4]) * widths[:, None]
    pred_h = torch.exp(deltas[:, 3::4]) * heights[:, None]
    return _corners(pred_ctr_x, pred_ctr_y, pred_w, pred_h, deltas)


def resize_bilinear_scale(image: torch.Tensor, scale: float) -> torch.Tensor:
    """OpenCV's cv2.resize(im, None, fx=scale, fy=scale, INTER_LINEAR) on a float image (C, H, W):
    output size round(W * scale) x round(H * scale); source coordinate (d + 0.5) / scale - 0.5,
    clamped to the border (OpenCV's mapping uses the given factor, not the size ratio)."""
    _, height, width = image.shape
    out_h, out_w = int(round(height * scale)), int(round(width * scale))

    def axis(out_size, in_size):
        src = (torch.arange(out_size, dtype=torch.float64, device=image.device) + 0.5) / scale - 0.5
        low = torch.floor(src)
        frac = src - low
        low = low.long()
        frac = torch.where(low < 0, torch.zeros_like(frac), frac)
        low = low.clamp(min=0)
        high = (low + 1).clamp(max=in_size - 1)
        frac = torch.where(low >= in_size - 1, torch.zeros_like(frac), frac)
        low = low.clamp(max=in_size - 1)
        return low, high, frac.to(image.dtype)

    y0, y1, fy = axis(out_h, height)
    x0, x1, fx = axis(out_w, width)
    rows = image[:, y0] * (1 - fy)[None, :, None] + image[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx
