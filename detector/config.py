"""The detector's `config.yaml` (the layout of `unc-nlp/frcnn-vg-finetuned`), read into a typed record.

Every value the network and the lxmert protocol use comes from the file; a missing or malformed
key is one line naming it. Sections (RESNETS, RPN, ROI_HEADS, ...) are found at the top level, as
LXMERT's `Config` reads them, or under MODEL, as detectron2 writes them; keys are matched without
regard to case (LXMERT's `Config` sets each key in upper case too).
"""

import os
from dataclasses import asdict, dataclass

import yaml

from errors import ConfigError

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "pytorch_model.bin"
BLOCKS = {50: (3, 4, 6), 101: (3, 4, 23), 152: (3, 8, 36)}     # res2..res4; res5 has 3 blocks


@dataclass(frozen=True)
class DetectorConfig:
    pixel_mean: tuple
    pixel_std: tuple
    caffe_maxpool: bool
    input_format: str
    min_size_test: int
    max_size_test: int
    depth: int
    num_groups: int
    width_per_group: int
    stem_out_channels: int
    res2_out_channels: int
    stride_in_1x1: bool
    res5_halve: bool
    anchor_sizes: tuple
    anchor_ratios: tuple
    anchor_offset: float
    rpn_hidden_channels: int
    rpn_min_size: float
    rpn_nms_thresh: float
    rpn_pre_nms_topk: int
    rpn_post_nms_topk: int
    rpn_bbox_weights: tuple
    num_classes: int
    nms_thresh_test: tuple
    box_weights: tuple
    pooler_resolution: int
    cls_agnostic_bbox_reg: bool
    attributes: bool
    num_attrs: int
    min_detections: int
    max_detections: int

    @property
    def blocks(self) -> tuple:
        return BLOCKS[self.depth]

    def to_dict(self) -> dict:
        return asdict(self)


class _Reader:
    def __init__(self, data: dict, source: str):
        self.data, self.source = _upper(data), source

    def section(self, name: str) -> dict:
        if isinstance(self.data.get(name), dict):
            return self.data[name]
        model = self.data.get("MODEL")
        if isinstance(model, dict) and isinstance(model.get(name), dict):
            return model[name]
        raise ConfigError(f"{self.source} has no {name} section (at the top level or under MODEL); is it the "
                          "config.yaml of a Faster R-CNN like unc-nlp/frcnn-vg-finetuned?")

    def value(self, section: str | None, key: str, kind, where: dict | None = None):
        table = self.data if section is None else (where if where is not None else self.section(section))
        name = key if section is None else f"{section}.{key}"
        if key not in table and section is None and isinstance(self.data.get("MODEL"), dict):
            table = self.data["MODEL"]
        if key not in table:
            raise ConfigError(f"{self.source}: {name} is missing; the detector needs it")
        return _typed(table[key], kind, f"{self.source}: {name}")


def _upper(data):
    if isinstance(data, dict):
        return {str(key).upper(): _upper(value) for key, value in data.items()}
    return data


def _typed(value, kind, label: str):
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if kind == "floats":          # a number or a list of numbers
            values = value if isinstance(value, (list, tuple)) else [value]
            return tuple(_typed(v, float, label) for v in values)
        if kind == "nested":          # [[...]] (one list per feature map) or [...]
            values = value[0] if isinstance(value, (list, tuple)) and value and isinstance(value[0], (list, tuple)) \
                else value
            if not isinstance(values, (list, tuple)) or not values:
                raise TypeError
            return tuple(_typed(v, float, label) for v in values)
    except (TypeError, ValueError, OverflowError):
        pass
    raise ConfigError(f"{label} = {value!r} is not {_KIND_NAMES.get(kind, kind)}")


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               "floats": "a number or a list of numbers", "nested": "a list of numbers"}


def read_config(path: str) -> DetectorConfig:
    """`path`: a config.yaml, or a folder holding one."""
    if os.path.isdir(path):
        path = os.path.join(path, CONFIG_NAME)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist; a detector folder holds config.yaml and pytorch_model.bin")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a readable YAML file ({first})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a detector configuration (a YAML mapping of sections)")
    return parse_config(data, path)


def parse_config(data: dict, source: str = "config.yaml") -> DetectorConfig:
    r = _Reader(data, source)
    resnets, rpn, anchors = r.section("RESNETS"), r.section("RPN"), r.section("ANCHOR_GENERATOR")
    proposals, heads, box = r.section("PROPOSAL_GENERATOR"), r.section("ROI_HEADS"), r.section("ROI_BOX_HEAD")
    inputs = r.section("INPUT")
    cfg = DetectorConfig(
        pixel_mean=r.value(None, "PIXEL_MEAN", "floats"),
        pixel_std=r.value(None, "PIXEL_STD", "floats"),
        caffe_maxpool=r.value(None, "MAX_POOL", bool),
        input_format=r.value("INPUT", "FORMAT", str, inputs).upper(),
        min_size_test=r.value("INPUT", "MIN_SIZE_TEST", int, inputs),
        max_size_test=r.value("INPUT", "MAX_SIZE_TEST", int, inputs),
        depth=r.value("RESNETS", "DEPTH", int, resnets),
        num_groups=r.value("RESNETS", "NUM_GROUPS", int, resnets),
        width_per_group=r.value("RESNETS", "WIDTH_PER_GROUP", int, resnets),
        stem_out_channels=r.value("RESNETS", "STEM_OUT_CHANNELS", int, resnets),
        res2_out_channels=r.value("RESNETS", "RES2_OUT_CHANNELS", int, resnets),
        stride_in_1x1=r.value("RESNETS", "STRIDE_IN_1X1", bool, resnets),
        res5_halve=r.value("ROI_BOX_HEAD", "RES5HALVE", bool, box),
        anchor_sizes=r.value("ANCHOR_GENERATOR", "SIZES", "nested", anchors),
        anchor_ratios=r.value("ANCHOR_GENERATOR", "ASPECT_RATIOS", "nested", anchors),
        anchor_offset=r.value("ANCHOR_GENERATOR", "OFFSET", float, anchors),
        rpn_hidden_channels=r.value("PROPOSAL_GENERATOR", "HIDDEN_CHANNELS", int, proposals),
        rpn_min_size=r.value("PROPOSAL_GENERATOR", "MIN_SIZE", float, proposals),
        rpn_nms_thresh=r.value("RPN", "NMS_THRESH", float, rpn),
        rpn_pre_nms_topk=r.value("RPN", "PRE_NMS_TOPK_TEST", int, rpn),
        rpn_post_nms_topk=r.value("RPN", "POST_NMS_TOPK_TEST", int, rpn),
        rpn_bbox_weights=r.value("RPN", "BBOX_REG_WEIGHTS", "floats", rpn),
        num_classes=r.value("ROI_HEADS", "NUM_CLASSES", int, heads),
        nms_thresh_test=r.value("ROI_HEADS", "NMS_THRESH_TEST", "floats", heads),
        box_weights=r.value("ROI_BOX_HEAD", "BBOX_REG_WEIGHTS", "floats", box),
        pooler_resolution=r.value("ROI_BOX_HEAD", "POOLER_RESOLUTION", int, box),
        cls_agnostic_bbox_reg=r.value("ROI_BOX_HEAD", "CLS_AGNOSTIC_BBOX_REG", bool, box),
        attributes=r.value("ROI_BOX_HEAD", "ATTR", bool, box),
        num_attrs=r.value("ROI_BOX_HEAD", "NUM_ATTRS", int, box),
        min_detections=r.value(None, "MIN_DETECTIONS", int),
        max_detections=r.value(None, "MAX_DETECTIONS", int),
    )
    _check(cfg, source, resnets, rpn, heads)
    return cfg


def _check(cfg: DetectorConfig, source: str, resnets: dict, rpn: dict, heads: dict) -> None:
    def bad(message):
        raise ConfigError(f"{source}: {message}")

    if cfg.depth not in BLOCKS:
        bad(f"RESNETS.DEPTH = {cfg.depth}; a ResNet C4 detector has depth 50, 101 or 152")
    for section, table in (("RESNETS.OUT_FEATURES", resnets.get("OUT_FEATURES")), ("RPN.IN_FEATURES", rpn.get(
            "IN_FEATURES")), ("ROI_HEADS.IN_FEATURES", heads.get("IN_FEATURES"))):
        if table is not None and list(table) != ["res4"]:
            bad(f"{section} = {table}; this C4 detector reads res4 only")
    if str(resnets.get("NORM", "FrozenBN")) not in ("BN", "FrozenBN"):
        bad(f"RESNETS.NORM = {resnets.get('NORM')}; the detector uses (frozen) batch norm")
    if len(cfg.pixel_mean) != 3 or len(cfg.pixel_std) != 3 or min(cfg.pixel_std) <= 0:
        bad("MODEL.PIXEL_MEAN and PIXEL_STD must be 3 numbers each, the standard deviations positive")
    if cfg.input_format not in ("BGR", "RGB"):
        bad(f"INPUT.FORMAT = {cfg.input_format}; give BGR or RGB")
    if min(cfg.min_size_test, cfg.max_size_test, cfg.rpn_pre_nms_topk, cfg.rpn_post_nms_topk, cfg.num_classes,
           cfg.pooler_resolution, cfg.stem_out_channels, cfg.res2_out_channels, cfg.num_groups,
           cfg.width_per_group) < 1:
        bad("sizes, channel counts, top-k counts and NUM_CLASSES must be at least 1")
    if len(cfg.rpn_bbox_weights) != 4 or len(cfg.box_weights) != 4:
        bad("RPN.BBOX_REG_WEIGHTS and ROI_BOX_HEAD.BBOX_REG_WEIGHTS must be 4 numbers each")
    if not 0.0 <= cfg.anchor_offset < 1.0:
        bad(f"ANCHOR_GENERATOR.OFFSET = {cfg.anchor_offset}; it lies in [0, 1)")
    if cfg.min_detections < 0 or cfg.max_detections < 1:
        bad("MIN_DETECTIONS must be at least 0 and MAX_DETECTIONS at least 1")
