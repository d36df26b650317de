"""Read the authors' released checkpoints and map them onto our modules.

Formats (README, "The authors' released checkpoints"):
* region systems (X-Dim `checkpoint_*.pth*.tar`, ESL-region H/A `*.pth.tar`): a dict with
  `model` = [image encoder, text encoder, head] state dicts saved from nn.DataParallel
  (keys prefixed `module.`) and `opt`, an argparse Namespace;
* ESL-CLIP H/A (`model_best_*_coco_clip_based.pth`): a dict with `state_dict` (OpenAI-layout
  CLIP under `clip.`, the head under `pool_frames.cross_attn.`) and `config`, the authors'
  Config object.

Files are read with torch's weights-only unpickler. argparse.Namespace is allow-listed; the
authors' Config classes are replaced by an inert attribute holder registered under their
names, so no code of theirs is imported or run. Every released key is either mapped by one
of the rules below or dropped by a named rule; anything else, and any of our parameters left
without a value, is an error.
"""

import argparse
import math
import re
import zipfile

import torch
from transformers import BertConfig

from config.options import config_from_saved
from errors import CheckpointError, first_line
from modules.backbones import resolve_backbone
from modules.levels import resolve_num_levels
from pairs import build_model
from . import native as checkpoint



class ReleasedConfig:
    """Stands in for the authors' pickled Config classes: only their attributes are kept."""


# Globals the released files may reference that are safe to rebuild. Anything else is refused.
SAFE_GLOBALS = {"argparse.Namespace": argparse.Namespace}
STUB_MODULE_PREFIXES = ("config.", "__main__.", "arguments.", "opts.")


def read_checkpoint(path: str):
    """Any checkpoint we accept, through the weights-only unpickler."""
    safe = [argparse.Namespace]
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip archive: read_file below reports it properly
        needed = []
    for name in needed:
        if name in SAFE_GLOBALS:
            continue
        if name.startswith(STUB_MODULE_PREFIXES):
            safe.append((ReleasedConfig, name))
        else:
            raise CheckpointError(f"checkpoint {path} needs '{name}' to be unpickled; refusing to import code "
                                  f"from a checkpoint (is it one of the supported formats?)")
    with torch.serialization.safe_globals(safe):
        # memory-mapped: only the tensors that are used (the model's, not a training checkpoint's
        # optimiser state, twice their size) are ever read; files of torch's legacy format cannot be
        return checkpoint.read_file(path, weights_only=True, mmap=zipfile.is_zipfile(path))


# --------------------------------------------------------------------------- key rules
# (pattern, replacement or None to drop, why). Applied to keys after `module.` is stripped;
# the first matching rule wins.
REGION_IMAGE_RULES = [
    (r"fc\.(weight|bias)$", r"encoders.image_encoder.fc.\1", "projection"),
    (r"mlp\.layers\.0\.(weight|bias)$", r"encoders.image_encoder.mlp_in.\1", "MLP layer 1"),
    (r"mlp\.layers\.1\.(weight|bias)$", r"encoders.image_encoder.mlp_out.\1", "MLP layer 2"),
    (r"mlp\.bns\.0\.(.+)$", r"encoders.image_encoder.mlp_bn.\1", "MLP BatchNorm"),
    (r"mlp\.bns\.1\..+$", None, "second BatchNorm the released MLP builds but never applies"),
]
REGION_TEXT_RULES = [
    (r"bert\.embeddings\.position_ids$", None, "constant arange buffer of older transformers"),
    (r"bert\.pooler\..+$", None, "BERT pooler, unused (token features only)"),
    (r"bert\.(.+)$", r"encoders.text_encoder.bert.\1", "BERT"),
    (r"linear\.(weight|bias)$", r"encoders.text_encoder.linear.\1", "word projection"),
]
XDIM_HEAD_RULES = [
    (r"weights\.weight$", "head.dependency_logits", "E"),
    (r"sim_map\.weight$", "head.threshold_scale", "s (1 x d -> d)"),
    (r"temp_learnable\.weight$", "head.mask_temperature", "t (1 x 1 -> scalar)"),
    (r"temp_scale\.weight$", "head.log_inv_tau", "tau (1 x 1 -> scalar)"),
    (r"sim_eval\.weight$", None, "Linear(d, 1) the released X-Dim forward never uses"),
]


def _level_rules(prefix: str, sims: str, sigma_used: bool) -> list:
    """ESL head rules; levels are 1-based in the released names, 0-based in ours."""
    rules = [
        (prefix + r"image_levels\.kernel_img_(\d+)\.weight$", "head.image_levels.kernels.{0-1}.weight", "H kernels"),
        (prefix + r"text_levels\.kernel_txt_(\d+)\.weight$", "head.text_levels.kernels.{0-1}.weight", "H kernels"),
        (prefix + r"image_levels\.masks_(\d+)\.weight$", "head.image_levels.masks.{0-1}.weight", "A masks"),
        (prefix + r"text_levels\.masks_(\d+)\.weight$", "head.text_levels.masks.{0-1}.weight", "A masks"),
        (sims + r"sim_eval\.weight$", "head.level_weights", "w (1 x L -> L)"),
        (sims + r"masks_(\d+)\.weight$", "head.bilinear.{0}", "B_l"),
        (sims + r"lynorm_(\d+)\.(weight|bias)$", "head.bilinear_norms.{0}.{1}", "LayerNorm of B_l"),
    ]
    if sigma_used:
        rules += [(sims + r"temp_scale_1\.weight$", "head.sigma", "sigma"),
                  (sims + r"temp_scale_2\.weight$", "head.lam", "lambda")]
    else:
        rules += [(sims + r"temp_scale_[12]\.weight$", None, "sigma/lambda, multiplied by 0 in the adaptive variant")]
    return rules


ESL_REGION_HEAD_RULES = {
    "esl_h": _level_rules(r"plus_encoder\.encoders_1\.", r"sims\.calculator_1\.", True)
    + [(r"sims\.calculator_1\.temp_scale\.weight$", "head.log_inv_tau", "tau (1 x 1 -> scalar)")],
    "esl_a": _level_rules(r"plus_encoder\.encoders_1\.", r"sims\.calculator_1\.", False)
    + [(r"sims\.calculator_1\.temp_scale\.weight$", "head.log_inv_tau", "tau (1 x 1 -> scalar)")],
}
_CLIP_HEAD = r"pool_frames\.cross_attn\."
ESL_CLIP_HEAD_RULES = (
    _level_rules(_CLIP_HEAD + r"plus_encoder\.encoders_1\.", _CLIP_HEAD + r"sims\.calculator_1\.", True)
    + [(_CLIP_HEAD + r"sims\.calculator_1\.temp_scale\.weight$", None,
        "temperature the released ESL-CLIP forward never uses")]
)

_CLIP_BLOCK = {
    "attn.out_proj.weight": "self_attn.out_proj.weight", "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight", "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight", "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
CLIP_RULES = [
    (r"clip\.(input_resolution|context_length|vocab_size)$", None, "integers of OpenAI's JIT export"),
    (r"clip\.logit_scale$", "encoders.clip.logit_scale", "logit scale"),
    (r"clip\.token_embedding\.weight$", "encoders.clip.text_model.embeddings.token_embedding.weight", "tokens"),
    (r"clip\.positional_embedding$", "encoders.clip.text_model.embeddings.position_embedding.weight", "positions"),
    (r"clip\.ln_final\.(weight|bias)$", r"encoders.clip.text_model.final_layer_norm.\1", "final LN"),
    (r"clip\.text_projection$", "encoders.clip.text_projection.weight", "transposed"),
    (r"clip\.visual\.class_embedding$", "encoders.clip.vision_model.embeddings.class_embedding", "CLS"),
    (r"clip\.visual\.positional_embedding$", "encoders.clip.vision_model.embeddings.position_embedding.weight", "positions"),
    (r"clip\.visual\.conv1\.weight$", "encoders.clip.vision_model.embeddings.patch_embedding.weight", "patches"),
    (r"clip\.visual\.ln_pre\.(weight|bias)$", r"encoders.clip.vision_model.pre_layrnorm.\1", "pre LN"),
    (r"clip\.visual\.ln_post\.(weight|bias)$", r"encoders.clip.vision_model.post_layernorm.\1", "post LN"),
    (r"clip\.visual\.proj$", "encoders.clip.visual_projection.weight", "transposed"),
    (r"clip\.visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$",
     "encoders.clip.vision_model.encoder.layers.{0}.self_attn.<qkv>_proj.{1}", "split in three"),
    (r"clip\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$",
     "encoders.clip.text_model.encoder.layers.{0}.self_attn.<qkv>_proj.{1}", "split in three"),
] + [
    (r"clip\.visual\.transformer\.resblocks\.(\d+)\." + re.escape(src) + "$",
     "encoders.clip.vision_model.encoder.layers.{0}." + dst, "block") for src, dst in _CLIP_BLOCK.items()
] + [
    (r"clip\.transformer\.resblocks\.(\d+)\." + re.escape(src) + "$",
     "encoders.clip.text_model.encoder.layers.{0}." + dst, "block") for src, dst in _CLIP_BLOCK.items()
]


def _target(replacement: str, match: re.Match) -> str:
    if "\\" in replacement:
        return match.expand(replacement)
    groups = match.groups()

    def group(placeholder: re.Match) -> str:
        value = groups[int(placeholder.group(1))]
        return str(int(value) - 1) if placeholder.group(2) else value  # {0-1}: 1-based level -> 0-based

    return re.sub(r"\{(\d)(-1)?\}", group, replacement)


def map_keys(source: dict, rules: list, path: str, part: str) -> dict:
    """Apply rules to every key; unmatched keys are an error naming the first of them."""
    mapped, unmatched = {}, []
    for key, value in source.items():
        for pattern, replacement, _ in rules:
            match = re.match(pattern, key)
            if match is None:
                continue
            if replacement is not None:
                target = _target(replacement, match)
                if "<qkv>" in target:
                    for name, chunk in zip("qkv", value.chunk(3, dim=0)):
                        mapped[target.replace("<qkv>", name)] = chunk.clone()
                elif target.endswith(("text_projection.weight", "visual_projection.weight")):
                    mapped[target] = value.t().contiguous()
                else:
                    mapped[target] = value
            break
        else:
            unmatched.append(key)
    if unmatched:
        raise CheckpointError(f"checkpoint {path}: {len(unmatched)} {part} keys have no mapping "
                              f"(e.g. {unmatched[0]}); is it one of the supported released formats?")
    return mapped


def _strip_module(state: dict) -> dict:
    return {key[len("module."):] if key.startswith("module.") else key: value for key, value in state.items()}


def detect(payload, path: str) -> str:
    """'xdim', 'esl_h', 'esl_a' (region) or 'clip_esl_h', 'clip_esl_a', or raise."""
    if isinstance(payload, dict) and isinstance(payload.get("model"), (list, tuple)) and len(payload["model"]) == 3:
        head = _strip_module(payload["model"][2])
        if "weights.weight" in head and "sim_map.weight" in head:
            return "xdim"
        if "plus_encoder.encoders_1.image_levels.kernel_img_1.weight" in head:
            return "esl_h"
        if "plus_encoder.encoders_1.image_levels.masks_1.weight" in head:
            return "esl_a"
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        state = payload["state_dict"]
        if "clip.visual.conv1.weight" in state:
            prefix = "pool_frames.cross_attn.plus_encoder.encoders_1.image_levels."
            if prefix + "kernel_img_1.weight" in state:
                return "clip_esl_h"
            if prefix + "masks_1.weight" in state:
                return "clip_esl_a"
    raise CheckpointError(f"checkpoint {path}: not a dimmatch checkpoint nor a released X-Dim / ESL-region / "
                          "ESL-CLIP one")


def _count_levels(keys, pattern: str) -> int:
    levels = {int(m.group(1)) for key in keys for m in [re.search(pattern, key)] if m}
    return max(levels) if levels else 0


def _attribute(obj, name: str, default=None):
    return getattr(obj, name, default) if obj is not None else default


def _given(args, name: str) -> dict:
    """The backbone option of the command line, if given (else the schema's default applies)."""
    value = getattr(args, name, None)
    return {name: value} if value is not None else {}


def _region_config(kind: str, payload: dict, args):
    image, text, head = (_strip_module(part) for part in payload["model"])
    opt = payload.get("opt")
    embed_size = image["fc.weight"].shape[0]
    values = dict(encoders="region_bert", sim_head=kind, embed_size=embed_size, img_dim=image["fc.weight"].shape[1],
                  data_name=_attribute(opt, "data_name"), **_given(args, "bert_path"))
    if kind != "xdim":
        values["kernel_size"] = int(_attribute(opt, "kernel_size", 2))
        values["esl_levels"] = resolve_num_levels(
            embed_size, values["kernel_size"], _count_levels(head, r"image_levels\.(?:kernel_img|masks)_(\d+)\."))
    parts = [(image, REGION_IMAGE_RULES, "image encoder"), (text, REGION_TEXT_RULES, "text encoder"),
             (head, XDIM_HEAD_RULES if kind == "xdim" else ESL_REGION_HEAD_RULES[kind], "head")]
    return config_from_saved(values, legacy=False), parts, None


def _clip_backbone_config(state: dict) -> dict:
    """transformers CLIPConfig (as a dict) of an OpenAI-layout state dict, from its shapes."""
    def count(prefix: str) -> int:
        return len({key[len(prefix):].split(".")[0] for key in state if key.startswith(prefix)})

    vision_width = state["clip.visual.conv1.weight"].shape[0]
    patch = state["clip.visual.conv1.weight"].shape[-1]
    grid = round(math.sqrt(state["clip.visual.positional_embedding"].shape[0] - 1))
    text_width = state["clip.ln_final.weight"].shape[0]
    return {
        "projection_dim": state["clip.text_projection"].shape[1],
        "logit_scale_init_value": 2.6592,
        "text_config": {
            "vocab_size": state["clip.token_embedding.weight"].shape[0], "hidden_size": text_width,
            "intermediate_size": state["clip.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": count("clip.transformer.resblocks."), "num_attention_heads": text_width // 64,
            "max_position_embeddings": state["clip.positional_embedding"].shape[0], "hidden_act": "quick_gelu",
            # eos id 2 selects transformers' argmax-of-ids pooling: OpenAI's EOT pooling
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        },
        "vision_config": {
            "hidden_size": vision_width,
            "intermediate_size": state["clip.visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": count("clip.visual.transformer.resblocks."),
            "num_attention_heads": vision_width // 64, "patch_size": patch, "image_size": patch * grid,
            "hidden_act": "quick_gelu",
        },
    }


def _clip_config(kind: str, payload: dict, args):
    state = payload["state_dict"]
    released_config = payload.get("config")
    strategy = kind.removeprefix("clip_")
    embed_size = state["clip.text_projection"].shape[1]
    kernel_size = int(_attribute(released_config, "kernel_size", 2))
    levels = _count_levels(state, r"image_levels\.(?:kernel_img|masks)_(\d+)\.")
    dataset_name = _attribute(released_config, "dataset_name", "")
    backbone_config = _clip_backbone_config(state)
    values = dict(encoders="clip", sim_head=strategy, embed_size=embed_size, img_dim=None,
                  image_size=backbone_config["vision_config"]["image_size"], kernel_size=kernel_size,
                  esl_levels=resolve_num_levels(embed_size, kernel_size, levels),
                  **_given(args, "clip_path"),
                  dataset={"MS-COCO": "coco", "Flickr30K": "f30k"}.get(dataset_name),
                  truncated_images="load")     # the released COCO loader decodes truncated JPEGs
    head = {key: value for key, value in state.items() if key.startswith("pool_frames.")}
    clip = {key: value for key, value in state.items() if not key.startswith("pool_frames.")}
    parts = [(clip, CLIP_RULES, "CLIP"), (head, ESL_CLIP_HEAD_RULES, "head")]
    return config_from_saved(values, legacy=False), parts, backbone_config


def _reshape_like(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Released scalars and vectors are Linear weights (1 x 1, 1 x n); ours are plain tensors."""
    if value.shape != target.shape and value.numel() == target.numel():
        return value.reshape(target.shape)
    return value


RELEASED_NAMES = {"xdim": "X-Dim", "esl_h": "ESL-region H", "esl_a": "ESL-region A",
                  "clip_esl_h": "ESL-CLIP H", "clip_esl_a": "ESL-CLIP A"}


def released_config(path: str, payload, args):
    """(kind, config, key-rule parts, backbone config) of an authors' checkpoint, without building
    its model. The BERT architecture of the region formats comes from --bert_path."""
    kind = detect(payload, path)
    if kind.startswith("clip_"):
        return (kind, *_clip_config(kind, payload, args))
    cfg, parts, _ = _region_config(kind, payload, args)
    return kind, cfg, parts, None


def region_backbone_config(cfg, path: str) -> dict:
    folder = resolve_backbone(cfg.bert_path, "--bert_path")
    try:
        return BertConfig.from_pretrained(folder).to_dict()
    except OSError as exc:
        raise CheckpointError(f"the BERT architecture of {path} comes from --bert_path {cfg.bert_path}, "
                              f"which cannot be loaded: {first_line(exc)}") from exc


def build_released(path: str, kind: str, cfg, parts: list, backbone_config: dict):
    """The model of an authors' checkpoint with its weights mapped onto ours."""
    model = build_model(cfg, backbone_config=backbone_config)
    own = model.state_dict()
    mapped = {}
    for source, rules, part in parts:
        mapped.update(map_keys(source, rules, path, part))
    missing = sorted(set(own) - set(mapped))
    if missing:
        raise CheckpointError(f"checkpoint {path}: {len(missing)} parameters of the {kind} model get no value "
                              f"(e.g. {missing[0]}); the file is incomplete")
    state = {key: _reshape_like(mapped[key], own[key]) for key in own}
    checkpoint.load_weights(model, state, path)
    return model


def released_history(payload: dict) -> str:
    """What a released file says of its training (region files: epoch and best rSum)."""
    epoch, best = payload.get("epoch"), payload.get("best_rsum")
    parts = [f"epoch {epoch}" if epoch is not None else None,
             f"best rSum {float(best):.1f} as recorded by the released training" if best is not None else None]
    return ", ".join(part for part in parts if part) or "no training record in the file"
