"""An encoder pair x a similarity head: the model every system is an instance of."""

import torch
from torch import nn
from torch.nn import functional as F

from devices import distributed
from errors import ConfigError
from .clip_encoder import ClipEncoders, build_clip
from .heads import LOCAL, build_head
from .region_encoder import RegionEncoder
from .text_encoder import BertTextEncoder, build_bert


class RegionBertEncoders(nn.Module):
    """BUTD regions -> RegionEncoder, BERT words -> linear; both give (N, T, d) + lengths."""

    feature_kind = LOCAL
    logit_scale = None

    def __init__(self, img_dim: int, embed_size: int, bert):
        super().__init__()
        self.image_encoder = RegionEncoder(img_dim, embed_size)
        self.text_encoder = BertTextEncoder(bert, embed_size)

    def encode_images(self, regions: torch.Tensor, lengths: torch.Tensor):
        return self.image_encoder(regions), lengths

    def encode_captions(self, input_ids: torch.Tensor, lengths: torch.Tensor):
        return self.text_encoder(input_ids), lengths

    def text_tokens(self) -> dict:
        return self.text_encoder.text_tokens()

    def optimizer_groups(self, cfg) -> list[dict]:
        """The released groups: text linear at lr, BERT at lr/10, the region encoder at lr."""
        lr = cfg.learning_rate
        return [
            {"params": list(self.text_encoder.linear.parameters()), "lr": lr, "name": "text_linear"},
            {"params": list(self.text_encoder.bert.parameters()), "lr": lr * 0.1, "name": "bert"},
            {"params": list(self.image_encoder.parameters()), "lr": lr, "name": "image_encoder"},
        ]


class Matcher(nn.Module):
    """Encoders + head. `forward` is the training computation (scores of a batch and its loss);
    evaluation uses the encode/prepare/score pieces directly."""

    def __init__(self, encoders: nn.Module, head: nn.Module):
        super().__init__()
        self.encoders = encoders
        self.head = head

    def encode_images(self, images, lengths=None):
        return self.encoders.encode_images(images, lengths)

    def text_tokens(self) -> dict:
        return self.encoders.text_tokens()

    def encode_captions(self, input_ids, lengths):
        return self.encoders.encode_captions(input_ids, lengths)

    @property
    def text_kind(self) -> str:
        """The tokenizer family of the text tower: 'bert' or 'clip'."""
        return "clip" if isinstance(self.encoders, ClipEncoders) else "bert"

    def optimizer_groups(self, cfg) -> list[dict]:
        head_lr = cfg.learning_rate if self.encoders.feature_kind == LOCAL else cfg.noclip_lr
        return self.encoders.optimizer_groups(cfg) + [
            {"params": list(self.head.parameters()), "lr": head_lr, "name": "head"}]

    def forward(self, images, image_lengths, input_ids, caption_lengths, criterion, pad_token_id=0):
        """This process's share of the batch loss.

        Single process: the loss of the full batch score matrix. Under DDP, each rank scores
        its images against all captions and all images against its captions (features
        gathered with gradients), so summing the ranks' shares gives exactly the loss of the
        global batch, negatives from every rank included."""
        world = distributed.world_size()
        if world > 1:
            # pad to the most regions and words of any rank before encoding, as one big batch would
            if images.dim() == 3:
                regions = distributed.all_reduce_max(images.shape[1], images.device)
                images = F.pad(images, (0, 0, 0, regions - images.shape[1]))
            words = distributed.all_reduce_max(input_ids.shape[1], input_ids.device)
            input_ids = F.pad(input_ids, (0, words - input_ids.shape[1]), value=pad_token_id)
        img, img_lengths = self.encode_images(images, image_lengths)
        cap, cap_lengths = self.encode_captions(input_ids, caption_lengths)
        batch = img.shape[0]
        positives = torch.arange(batch, device=img.device)
        if world == 1:
            rows = self.head(img, img_lengths, cap, cap_lengths)
            columns = rows.t()
            total = batch
        else:
            # the last batch of an epoch may be split unevenly (--last_batch keep)
            sizes = distributed.gathered_sizes(batch, img.device)
            gather = distributed.all_gather_with_grad
            lengths = distributed.all_gather_no_grad
            all_img, all_cap = gather(img, sizes), gather(cap, sizes)
            all_img_lengths = None if img_lengths is None else lengths(img_lengths, sizes)
            all_cap_lengths = None if cap_lengths is None else lengths(cap_lengths, sizes)
            rows = self.head(img, img_lengths, all_cap, all_cap_lengths)
            columns = self.head(all_img, all_img_lengths, cap, cap_lengths).t()
            positives = positives + sum(sizes[:distributed.rank()])
            total = sum(sizes)
        if criterion.uses_logit_scale:
            scale = self.encoders.logit_scale.exp()
            rows, columns = rows * scale, columns * scale
        return criterion(rows, positives, columns, positives, total)


def build_model(cfg, backbone_config: dict | None = None) -> Matcher:
    """The model a config describes. With `backbone_config` (a saved BERT/CLIP config dict) only
    the architecture is built, for weights that come from a checkpoint; otherwise the backbone's
    pretrained weights are loaded from `--bert_path` / `--clip_path`."""
    if cfg.encoders == "region_bert":
        encoders = RegionBertEncoders(cfg.img_dim, cfg.embed_size, build_bert(cfg.bert_path, config=backbone_config))
    elif cfg.encoders == "clip":
        encoders = ClipEncoders(build_clip(cfg.clip_path, config=backbone_config))
        if encoders.embed_size != cfg.embed_size:
            raise ConfigError(
                f"--embed_size {cfg.embed_size} does not match the CLIP projection size "
                f"{encoders.embed_size} of {cfg.clip_path}; the CLIP systems work in CLIP's own space")
    else:
        raise ConfigError(f"unknown encoder pair {cfg.encoders!r} (choose region_bert or clip)")
    head = build_head(cfg.sim_head, encoders.feature_kind, cfg.embed_size, cfg.kernel_size,
                      cfg.esl_levels, cfg.cosine_pool)
    if encoders.feature_kind not in head.feature_kinds:
        raise ConfigError(
            f"--sim_head {cfg.sim_head} needs {' or '.join(head.feature_kinds)} features, but the "
            f"{cfg.encoders} encoders give {encoders.feature_kind} ones; use esl_h, esl_a or cosine")
    return Matcher(encoders, head)


def pretrained_text_positions(cfg) -> int:
    """Token positions of the pretrained text tower a training config names (from its config file)."""
    from transformers import BertConfig, CLIPConfig
    from .backbones import resolve_backbone
    if cfg.encoders == "clip":
        return CLIPConfig.from_pretrained(resolve_backbone(cfg.clip_path, "--clip_path")).text_config.max_position_embeddings
    return BertConfig.from_pretrained(resolve_backbone(cfg.bert_path, "--bert_path")).max_position_embeddings


def backbone_config_of(model: Matcher) -> dict:
    """The BERT/CLIP config dict that rebuilds this model's backbone architecture."""
    encoders = model.encoders
    backbone = encoders.clip if isinstance(encoders, ClipEncoders) else encoders.text_encoder.bert
    return backbone.config.to_dict()
