"""Small detector folders with random weights, for tests, the benchmark and the demo (the real
weights are `unc-nlp/frcnn-vg-finetuned`)."""

import math
import os

import torch
import yaml

from .config import CONFIG_NAME, WEIGHTS_NAME, parse_config
from .model import FasterRCNN


def config_dict(depth: int = 50, stem: int = 8, res2: int = 16, width: int = 4, classes: int = 5, attrs: int = 3,
                hidden: int = 16, min_size: int = 96, max_size: int = 160, pre_nms: int = 200, post_nms: int = 40,
                nms_thresh=(0.3, 0.5, 0.7), min_det: int = 4, max_det: int = 10, pooler: int = 14) -> dict:
    """A config.yaml in the layout of unc-nlp/frcnn-vg-finetuned (top-level sections, as LXMERT's
    Config reads them), small by default; `full()` gives the real network's sizes."""
    return {
        "MODEL": {"DEVICE": "cpu", "MAX_POOL": True, "PIXEL_MEAN": [102.9801, 115.9465, 122.7717],
                  "PIXEL_STD": [1.0, 1.0, 1.0]},
        "INPUT": {"FORMAT": "BGR", "MIN_SIZE_TEST": min_size, "MAX_SIZE_TEST": max_size},
        "RESNETS": {"DEPTH": depth, "NUM_GROUPS": 1, "WIDTH_PER_GROUP": width, "STEM_OUT_CHANNELS": stem,
                    "RES2_OUT_CHANNELS": res2, "STRIDE_IN_1X1": True, "RES5_DILATION": 1, "NORM": "FrozenBN",
                    "OUT_FEATURES": ["res4"]},
        "ANCHOR_GENERATOR": {"SIZES": [[32, 64, 128]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]], "OFFSET": 0.0},
        "PROPOSAL_GENERATOR": {"HIDDEN_CHANNELS": hidden, "MIN_SIZE": 0},
        "RPN": {"NMS_THRESH": 0.7, "PRE_NMS_TOPK_TEST": pre_nms, "POST_NMS_TOPK_TEST": post_nms,
                "BBOX_REG_WEIGHTS": [1.0, 1.0, 1.0, 1.0], "IN_FEATURES": ["res4"]},
        "ROI_HEADS": {"NUM_CLASSES": classes, "NMS_THRESH_TEST": list(nms_thresh), "SCORE_THRESH_TEST": 0.2,
                      "IN_FEATURES": ["res4"]},
        "ROI_BOX_HEAD": {"BBOX_REG_WEIGHTS": [10.0, 10.0, 5.0, 5.0], "POOLER_RESOLUTION": pooler,
                         "POOLER_SAMPLING_RATIO": 0, "RES5HALVE": False, "ATTR": True, "NUM_ATTRS": attrs,
                         "CLS_AGNOSTIC_BBOX_REG": False},
        "MIN_DETECTIONS": min_det, "MAX_DETECTIONS": max_det, "PAD_VALUE": 0.0, "SIZE_DIVISIBILITY": 0,
    }


def full(**overrides) -> dict:
    """The real network's sizes (ResNet-101, 1,600 classes, 400 attributes, 4 x 3 anchors, RPN 512)."""
    values = dict(depth=101, stem=64, res2=256, width=64, classes=1600, attrs=400, hidden=512)
    values.update(overrides)
    data = config_dict(**values)
    data["ANCHOR_GENERATOR"]["SIZES"] = [[64, 128, 256, 512]]
    return data


def random_state(cfg, seed: int = 0) -> dict:
    """Weights that keep activations in a sane range through any depth: He-scaled convolutions
    (the last of each bottleneck and the shortcuts damped), batch norm near identity."""
    generator = torch.Generator().manual_seed(seed)
    model = FasterRCNN(cfg)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") or "cell_anchors" in key:
            state[key] = value.clone()
        elif key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=generator) * 0.05
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif key.endswith("norm.weight"):
            state[key] = 0.8 + 0.4 * torch.rand(value.shape, generator=generator)
        elif key.endswith("norm.bias"):
            state[key] = torch.randn(value.shape, generator=generator) * 0.05
        elif value.dim() == 4:
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            damp = 0.3 if key.endswith("conv3.weight") or "shortcut" in key else 1.0
            state[key] = torch.randn(value.shape, generator=generator) * math.sqrt(2.0 / fan_in) * damp
        elif key.endswith("weight"):
            state[key] = torch.randn(value.shape, generator=generator) / math.sqrt(value.shape[-1])
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
    for key in ("proposal_generator.rpn_head.anchor_deltas.weight", "roi_heads.box_predictor.bbox_pred.weight"):
        state[key] = state[key] * 0.1
    return state


def write_detector(folder: str, data: dict | None = None, seed: int = 0) -> str:
    """A detector folder (config.yaml + pytorch_model.bin) with random weights."""
    data = data or config_dict()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, CONFIG_NAME), "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    torch.save(random_state(parse_config(data), seed), os.path.join(folder, WEIGHTS_NAME))
    return folder
