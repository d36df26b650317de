"""An independent reference for `--protocol lxmert`, written in the style of LXMERT's extractor
(HuggingFace research_projects/lxmert: processing_image.Preprocess, modeling_frcnn.GeneralizedRCNN):
one image at a time, the network evaluated functionally straight from the state dict, anchors, box
decoding, NMS and RoI pooling as loops per box following the reference's code paths and
torchvision's C++ kernels. It shares no code with `detector/` beyond torch, so a test that
compares the two checks the names, the architecture and every step.

Two documented departures from the reference, as in ours: the image is fed in config.yaml's
INPUT.FORMAT channel order (the reference's local loader feeds RGB to BGR means), and when no
NMS threshold keeps MIN_DETECTIONS boxes the last threshold's boxes are used (the reference
crashes on the first image, or reuses the previous image's boxes).
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def _bn(state, prefix, x):
    return F.batch_norm(x, state[prefix + ".running_mean"], state[prefix + ".running_var"],
                        state[prefix + ".weight"], state[prefix + ".bias"], False, 0.0, 1e-5)


def _conv(state, prefix, x, stride=1, padding=0, dilation=1):
    return _bn(state, prefix + ".norm", F.conv2d(x, state[prefix + ".weight"], None, stride, padding, dilation))


def _block(state, prefix, x, stride, dilation, stride_in_1x1=True):
    s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
    out = F.relu(_conv(state, prefix + ".conv1", x, stride=s1))
    out = F.relu(_conv(state, prefix + ".conv2", out, stride=s3, padding=dilation, dilation=dilation))
    out = _conv(state, prefix + ".conv3", out)
    short = _conv(state, prefix + ".shortcut", x, stride=stride) if prefix + ".shortcut.weight" in state else x
    return F.relu(out + short)


def _blocks(state, stage):
    return sorted({int(key.split(".")[2]) for key in state if key.startswith(stage + ".")})


def backbone(state, x):
    x = F.relu(_conv(state, "backbone.stem.conv1", x, stride=2, padding=3))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
    for index, name in enumerate(("res2", "res3", "res4")):
        for block in _blocks(state, "backbone." + name):
            x = _block(state, f"backbone.{name}.{block}", x, 2 if block == 0 and index > 0 else 1, 1)
    return x


def res5(state, x):
    for block in range(3):
        x = _block(state, f"roi_heads.res5.{block}", x, 1, 2)
    return x


def apply_deltas(deltas, boxes, weights, scale_clamp=math.log(1000.0 / 16)):
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = deltas[:, 0::4] / wx
    dy = deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=scale_clamp)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    pred = torch.zeros_like(deltas)
    pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return pred


def nms_loop(boxes, scores, threshold):
    """torchvision's CPU nms_kernel, box by box, in float32."""
    b = boxes.numpy().astype(np.float32)
    order = np.argsort(-scores.numpy(), kind="stable")
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for _i in range(len(order)):
        i = order[_i]
        if suppressed[i]:
            continue
        keep.append(i)
        for _j in range(_i + 1, len(order)):
            j = order[_j]
            if suppressed[j]:
                continue
            xx1, yy1 = max(b[i, 0], b[j, 0]), max(b[i, 1], b[j, 1])
            xx2, yy2 = min(b[i, 2], b[j, 2]), min(b[i, 3], b[j, 3])
            w, h = np.float32(max(np.float32(0), xx2 - xx1)), np.float32(max(np.float32(0), yy2 - yy1))
            inter = np.float32(w * h)
            ovr = np.float32(inter / np.float32(areas[i] + areas[j] - inter))
            if ovr > threshold:
                suppressed[j] = True
    return torch.tensor(keep, dtype=torch.long)


def nms_kept_loop(boxes, scores, threshold):
    """The same NMS as a loop over kept boxes, each suppressing the rest at once (py_cpu_nms's
    structure, torchvision's areas): what the benchmark times, where a pair-by-pair Python loop over
    6,000 proposals would measure Python rather than the algorithm."""
    b = boxes.numpy().astype(np.float32)
    s = scores.numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-s, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def roi_pool_loop(feature, boxes, size, scale):
    """torchvision's roi_pool_forward_kernel_impl for one image, box by box and bin by bin."""
    channels, height, width = feature.shape
    out = torch.zeros((len(boxes), channels, size, size))
    for n, box in enumerate(boxes.tolist()):
        s = np.float32(scale)
        start_w, start_h = int(_c_round(np.float32(box[0]) * s)), int(_c_round(np.float32(box[1]) * s))
        end_w, end_h = int(_c_round(np.float32(box[2]) * s)), int(_c_round(np.float32(box[3]) * s))
        roi_w, roi_h = max(end_w - start_w + 1, 1), max(end_h - start_h + 1, 1)
        bin_h, bin_w = np.float32(roi_h) / np.float32(size), np.float32(roi_w) / np.float32(size)
        for ph in range(size):
            hstart = min(max(int(math.floor(np.float32(ph) * bin_h)) + start_h, 0), height)
            hend = min(max(int(math.ceil(np.float32(ph + 1) * bin_h)) + start_h, 0), height)
            for pw in range(size):
                wstart = min(max(int(math.floor(np.float32(pw) * bin_w)) + start_w, 0), width)
                wend = min(max(int(math.ceil(np.float32(pw + 1) * bin_w)) + start_w, 0), width)
                if hend <= hstart or wend <= wstart:
                    continue
                out[n, :, ph, pw] = feature[:, hstart:hend, wstart:wend].amax(dim=(1, 2))
    return out


def _c_round(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def preprocess(rgb: np.ndarray, cfg: dict):
    """processing_image.Preprocess for one image (BGR when INPUT.FORMAT says BGR)."""
    img = rgb[:, :, ::-1].copy() if cfg["INPUT"]["FORMAT"] == "BGR" else rgb
    img = torch.as_tensor(img).float()
    h, w = img.shape[:2]
    size, max_size = cfg["INPUT"]["MIN_SIZE_TEST"], cfg["INPUT"]["MAX_SIZE_TEST"]
    scale = size * 1.0 / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    neww = int(neww + 0.5)
    newh = int(newh + 0.5)
    img = F.interpolate(img.permute(2, 0, 1).unsqueeze(0), (newh, neww), mode="bilinear", align_corners=False)
    mean = torch.tensor(cfg["MODEL"]["PIXEL_MEAN"]).view(3, 1, 1)
    std = torch.tensor(cfg["MODEL"]["PIXEL_STD"]).view(3, 1, 1)
    img = (img[0] - mean) / std
    sizes = torch.tensor([newh, neww])
    return img.unsqueeze(0), sizes, torch.true_divide(torch.tensor([h, w]), sizes)


@torch.no_grad()
def reference_extract(state: dict, cfg: dict, rgb: np.ndarray, max_detections: int, nms=nms_loop):
    """(features R x width, boxes R x 4, count) as LXMERT's extractor with max_detections = R,
    padded with zeros to R."""
    image, (h, w), scales_yx = preprocess(rgb, cfg)
    features = backbone(state, image)
    # RPN head
    hidden = F.relu(F.conv2d(features, state["proposal_generator.rpn_head.conv.weight"],
                             state["proposal_generator.rpn_head.conv.bias"], padding=1))
    logits = F.conv2d(hidden, state["proposal_generator.rpn_head.objectness_logits.weight"],
                      state["proposal_generator.rpn_head.objectness_logits.bias"])
    deltas = F.conv2d(hidden, state["proposal_generator.rpn_head.anchor_deltas.weight"],
                      state["proposal_generator.rpn_head.anchor_deltas.bias"])
    base = state["proposal_generator.anchor_generator.cell_anchors.0"]
    grid_h, grid_w = features.shape[-2:]
    stride, offset = 16, cfg["ANCHOR_GENERATOR"]["OFFSET"]
    shifts_x = torch.arange(offset * stride, grid_w * stride, step=stride, dtype=torch.float32)
    shifts_y = torch.arange(offset * stride, grid_h * stride, step=stride, dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    anchors = (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)
    A = base.shape[0]
    d = deltas.view(1, -1, 4, grid_h, grid_w).permute(0, 3, 4, 1, 2).reshape(-1, 4)
    proposals = apply_deltas(d, anchors, cfg["RPN"]["BBOX_REG_WEIGHTS"]).view(1, -1, 4)
    objectness = logits.permute(0, 2, 3, 1).reshape(1, -1)
    assert objectness.shape[1] == grid_h * grid_w * A
    k = min(cfg["RPN"]["PRE_NMS_TOPK_TEST"], objectness.shape[1])
    sorted_logits, idx = objectness.sort(descending=True, dim=1)
    boxes, scores = proposals[0, idx[0, :k]].clone(), sorted_logits[0, :k]
    boxes[:, 0].clamp_(min=0, max=w)
    boxes[:, 1].clamp_(min=0, max=h)
    boxes[:, 2].clamp_(min=0, max=w)
    boxes[:, 3].clamp_(min=0, max=h)
    m = cfg["PROPOSAL_GENERATOR"]["MIN_SIZE"]
    keep = ((boxes[:, 2] - boxes[:, 0]) > m) & ((boxes[:, 3] - boxes[:, 1]) > m)
    boxes, scores = boxes[keep], scores[keep]
    keep = nms(boxes, scores, cfg["RPN"]["NMS_THRESH"])[:cfg["RPN"]["POST_NMS_TOPK_TEST"]]
    boxes, scores = boxes[keep], scores[keep]
    scores, order = scores.sort(descending=True)
    boxes = boxes[order]
    # RoI heads
    pooled = roi_pool_loop(features[0], boxes, cfg["ROI_BOX_HEAD"]["POOLER_RESOLUTION"], 1.0 / 16)
    pooled_features = res5(state, pooled).mean(dim=[2, 3])
    obj_logits = F.linear(pooled_features, state["roi_heads.box_predictor.cls_score.weight"],
                          state["roi_heads.box_predictor.cls_score.bias"])
    box_deltas = F.linear(pooled_features, state["roi_heads.box_predictor.bbox_pred.weight"],
                          state["roi_heads.box_predictor.bbox_pred.bias"])
    # ROIOutputs: class-specific boxes, then do_nms for each threshold
    K = box_deltas.shape[-1] // 4
    pred = apply_deltas(box_deltas.view(-1, 4), boxes.unsqueeze(-2).expand(len(boxes), K, 4).reshape(-1, 4),
                        cfg["ROI_BOX_HEAD"]["BBOX_REG_WEIGHTS"]).view(len(boxes), K * 4)
    probs = F.softmax(obj_logits, dim=-1)[:, :-1]
    pred = pred.reshape(-1, 4)
    pred[:, 0].clamp_(min=0, max=w)
    pred[:, 1].clamp_(min=0, max=h)
    pred[:, 2].clamp_(min=0, max=w)
    pred[:, 3].clamp_(min=0, max=h)
    pred = pred.view(-1, K, 4)
    max_scores, max_classes = probs.max(1)
    flat = pred.view(-1, 4)
    max_boxes = flat[torch.arange(len(pred)) * K + max_classes]
    mind = min(cfg["MIN_DETECTIONS"], max_detections)
    for threshold in cfg["ROI_HEADS"]["NMS_THRESH_TEST"]:
        keep = nms(max_boxes, max_scores, threshold)[:max_detections]
        if mind <= len(keep) <= max_detections:
            break
    out_boxes = max_boxes[keep].clone()
    out_boxes[:, 0::2] *= scales_yx[1]
    out_boxes[:, 1::2] *= scales_yx[0]
    out_features = pooled_features[keep]
    count = len(keep)
    pad = max_detections - count
    return (F.pad(out_features, (0, 0, 0, pad)).numpy(), F.pad(out_boxes, (0, 0, 0, pad)).numpy(), count)
