"""The Visual Genome Faster R-CNN (ResNet C4) of bottom-up attention, in plain PyTorch.

Module and parameter names follow LXMERT's `modeling_frcnn.py`, so the `pytorch_model.bin` of
`unc-nlp/frcnn-vg-finetuned` loads strictly (a missing `num_batches_tracked` is accepted: it is
unused at inference). The network only computes; what is done with its outputs (resizing,
proposals, which boxes are kept) is the protocol's (`detector/protocols.py`).

* backbone: stem conv 7x7/2 + frozen BN + ReLU + max-pool 3x3/2 (Caffe: no padding, ceil mode, when
  MODEL.MAX_POOL), then res2..res4 bottlenecks (stride in the first 1x1 with RESNETS.STRIDE_IN_1X1),
  output res4 at stride 16.
* RPN head: 3x3 conv to PROPOSAL_GENERATOR.HIDDEN_CHANNELS + ReLU, 1x1 convs to A objectness logits
  and 4A deltas; `cell_anchors.0` is the stored cell-anchor table (A x 4, centred on 0).
* RoI head: RoI max-pooling POOLER_RESOLUTION^2 at 1/16, res5 (3 bottlenecks; unless RES5HALVE,
  stride 1 and dilation 2), mean over the pooled grid = the region feature (8 x RES2_OUT_CHANNELS),
  then class logits (NUM_CLASSES + 1, background last) and class-specific box deltas.
"""

import math
import os

import torch
import torch.nn.functional as F
from huggingface_hub import snapshot_download
from torch import nn

from errors import CheckpointError, ConfigError, first_line
from .config import CONFIG_NAME, WEIGHTS_NAME, DetectorConfig, read_config
from .ops import roi_max_pool

BN_EPS = 1e-5


class FrozenBatchNorm(nn.Module):
    """Batch norm with its stored statistics (eps 1e-5), as BatchNorm2d in eval mode; never updated."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, BN_EPS)


class ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by frozen batch norm (keys `conv.weight`, `conv.norm.*`)."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, dilation=1):
        super().__init__(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=False)
        self.norm = FrozenBatchNorm(cout)

    def forward(self, x):
        return self.norm(super().forward(x))


class Bottleneck(nn.Module):
    def __init__(self, cin, cout, bottleneck, stride, stride_in_1x1, dilation=1):
        super().__init__()
        self.shortcut = ConvNorm(cin, cout, 1, stride=stride) if cin != cout else None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = ConvNorm(cin, bottleneck, 1, stride=stride_1x1)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=stride_3x3, padding=dilation, dilation=dilation)
        self.conv3 = ConvNorm(bottleneck, cout, 1)

    def forward(self, x):
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


def stage(blocks, cin, cout, bottleneck, first_stride, stride_in_1x1, dilation=1) -> nn.Sequential:
    layers = []
    for index in range(blocks):
        layers.append(Bottleneck(cin, cout, bottleneck, first_stride if index == 0 else 1, stride_in_1x1, dilation))
        cin = cout
    return nn.Sequential(*layers)


class Stem(nn.Module):
    def __init__(self, cout, caffe_maxpool):
        super().__init__()
        self.conv1 = ConvNorm(3, cout, 7, stride=2, padding=3)
        self.caffe_maxpool = caffe_maxpool

    def forward(self, x):
        x = F.relu_(self.conv1(x))
        if self.caffe_maxpool:
            return F.max_pool2d(x, kernel_size=3, stride=2, padding=0, ceil_mode=True)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Backbone(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.stem = Stem(cfg.stem_out_channels, cfg.caffe_maxpool)
        cin, cout, mid = cfg.stem_out_channels, cfg.res2_out_channels, cfg.num_groups * cfg.width_per_group
        if cfg.num_groups != 1:
            raise ConfigError("RESNETS.NUM_GROUPS must be 1 (grouped bottlenecks are not part of this detector)")
        for index, blocks in enumerate(cfg.blocks):
            self.add_module(f"res{index + 2}", stage(blocks, cin, cout, mid, 1 if index == 0 else 2,
                                                     cfg.stride_in_1x1))
            cin, cout, mid = cout, cout * 2, mid * 2

    def forward(self, x):
        return self.res4(self.res3(self.res2(self.stem(x))))


def cell_anchors(sizes, ratios) -> torch.Tensor:
    """detectron2's cell anchors: for each size, for each ratio (h / w), a box of that area centred
    on 0 (the table stored in the weights as `cell_anchors.0`)."""
    anchors = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size ** 2.0 / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors).float()


class AnchorGenerator(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cell_anchors = nn.ParameterList([nn.Parameter(cell_anchors(cfg.anchor_sizes, cfg.anchor_ratios),
                                                           requires_grad=False)])


class RPNHead(nn.Module):
    def __init__(self, cin, hidden, anchors):
        super().__init__()
        self.conv = nn.Conv2d(cin, hidden, 3, padding=1)
        self.objectness_logits = nn.Conv2d(hidden, anchors, 1)
        self.anchor_deltas = nn.Conv2d(hidden, anchors * 4, 1)

    def forward(self, x):
        hidden = F.relu(self.conv(x))
        return self.objectness_logits(hidden), self.anchor_deltas(hidden)


class ProposalGenerator(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        cin = cfg.res2_out_channels * 4
        anchors = len(cfg.anchor_sizes) * len(cfg.anchor_ratios)
        self.anchor_generator = AnchorGenerator(cfg)
        self.rpn_head = RPNHead(cin, cin if cfg.rpn_hidden_channels == -1 else cfg.rpn_hidden_channels, anchors)


class BoxPredictor(nn.Module):
    def __init__(self, cfg: DetectorConfig, width: int):
        super().__init__()
        self.cls_score = nn.Linear(width, cfg.num_classes + 1)
        self.bbox_pred = nn.Linear(width, 4 * (1 if cfg.cls_agnostic_bbox_reg else cfg.num_classes))
        if cfg.attributes:       # kept so the weights load; attributes are not part of the features
            self.cls_embedding = nn.Embedding(cfg.num_classes + 1, width // 8)
            self.fc_attr = nn.Linear(width + width // 8, width // 4)
            self.attr_score = nn.Linear(width // 4, cfg.num_attrs + 1)

    def forward(self, x):
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        width = cfg.res2_out_channels * 8
        stride, dilation = (2, 1) if cfg.res5_halve else (1, 2)
        self.res5 = stage(3, width // 2, width, cfg.num_groups * cfg.width_per_group * 8, stride, cfg.stride_in_1x1,
                          dilation)
        self.box_predictor = BoxPredictor(cfg, width)


class FasterRCNN(nn.Module):
    """The network. `features(images)` -> res4; `rpn(res4)` -> (logits N x A x H x W, deltas N x 4A x H x W);
    `region_features(res4, rois)` -> (K x width) means of res5 over the pooled grid; `predict(x)` ->
    (class logits, box deltas)."""

    feature_stride = 16

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.proposal_generator = ProposalGenerator(cfg)
        self.roi_heads = RoIHeads(cfg)
        self.eval()
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    @property
    def cell_anchors(self) -> torch.Tensor:
        return self.proposal_generator.anchor_generator.cell_anchors[0]

    def features(self, images):
        return self.backbone(images)

    def rpn(self, res4):
        return self.proposal_generator.rpn_head(res4)

    def region_features(self, res4, rois, chunk: int = 64):
        """rois (K, 5): image index in `res4`, x1, y1, x2, y2 in input pixels."""
        size = self.cfg.pooler_resolution
        out = []
        for first in range(0, len(rois), chunk):
            pooled = roi_max_pool(res4, rois[first:first + chunk], size, 1.0 / self.feature_stride)
            out.append(self.roi_heads.res5(pooled).mean(dim=(2, 3)))
        if not out:
            return res4.new_zeros((0, self.cfg.res2_out_channels * 8))
        return torch.cat(out)

    def predict(self, region_features):
        return self.roi_heads.box_predictor(region_features)


def resolve_detector(name: str, option: str = "--detector") -> str:
    """The folder of a detector: a local folder, or a hub name already in the HuggingFace cache
    (never downloaded here: fetch it once online, see README)."""
    path = os.path.expanduser(name)
    how = ("fetch it once online: python -c \"from huggingface_hub import snapshot_download as d; "
           "d('unc-nlp/frcnn-vg-finetuned', local_dir='detectors/frcnn-vg')\", then give --detector detectors/frcnn-vg")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"{option} {name} is a file; give the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    elif os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") != 1:
        raise ConfigError(f"{option} {name}: no such folder (relative paths are read from {os.getcwd()})")
    else:
        try:
            path = snapshot_download(name, local_files_only=True)
        except Exception:   # noqa: BLE001 - any failure of the cache lookup is "not there"
            raise ConfigError(f"{option} {name} is neither a folder here nor in the HuggingFace cache; {how}") \
                from None
    for needed in (CONFIG_NAME, WEIGHTS_NAME):
        if not os.path.isfile(os.path.join(path, needed)):
            raise ConfigError(f"{option} {name} has no {needed}; a detector folder holds {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME} (as unc-nlp/frcnn-vg-finetuned)")
    return path


def _load_failure(exc: BaseException) -> str:
    """Why torch.load refused a file, without PyTorch's advice to retry with weights_only=False: that
    would run whatever code the file holds, and a detector's weights never need it."""
    text = str(exc)
    if "weights_only" not in text:
        return first_line(exc)
    after = text.split("WeightsUnpickler error:", 1)[1:]
    detail = " ".join(after[0].strip().split("\n\n")[0].split()) if after else ""
    return f"it cannot be read as plain tensors: {detail}" if detail else "it cannot be read as plain tensors"


def load_detector(folder: str, device: torch.device = torch.device("cpu"), option: str = "--detector"):
    """(model, config) from a detector folder; every weight is loaded, strictly."""
    cfg = read_config(os.path.join(folder, CONFIG_NAME))
    model = FasterRCNN(cfg)
    path = os.path.join(folder, WEIGHTS_NAME)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file is one line
        raise CheckpointError(f"{path} is not a PyTorch weights file ({_load_failure(exc)})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    state = {key.replace("gamma", "weight").replace("beta", "bias"): value for key, value in state.items()}
    expected = model.state_dict()
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"misses {missing[0]}" if missing else f"has {unexpected[0]}, unknown to the detector"
        raise CheckpointError(f"{path} {what} ({len(missing)} missing, {len(unexpected)} unexpected keys): its "
                              f"weights do not match {folder}/{CONFIG_NAME}")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(state[key].shape)}, {folder}/{CONFIG_NAME} "
                                  f"makes it {tuple(value.shape)}")
    model.load_state_dict(state, strict=True)
    return model.to(device), cfg
