"""An encoder pair x a similarity head: the model every system is an instance of (built by
`pairs.build_model`)."""

import torch
from torch import nn
from torch.nn import functional as F

from devices import distributed
from .common import pooled


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
        """The tokenizer family of the text tower (datasets.captions: 'bert' or 'clip')."""
        return self.encoders.text_kind

    def backbone_config(self) -> dict:
        """The backbone config dict that rebuilds this model's architecture."""
        return self.encoders.backbone_config()

    def optimizer_groups(self, cfg, head_lr: float) -> list[dict]:
        return self.encoders.optimizer_groups(cfg) + [
            {"params": list(self.head.parameters()), "lr": head_lr, "name": "head"}]

    def global_vectors(self, encoded, lengths, prepared) -> torch.Tensor:
        """The system's global embedding of a batch: the head's prepared features where its score
        is their inner product (exact), else the pooled encoder features."""
        return prepared if self.head.exact_global else pooled(encoded, lengths)

    def forward(self, images, image_lengths, input_ids, caption_lengths, criterion, pad_token_id=0,
                global_loss_weight: float = 0.0):
        """This process's share of the batch loss; with `global_loss_weight` W > 0, plus W times the
        same loss on the cosine of the pooled features (the global stage of two-stage retrieval).

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
        loss = self._loss(self.head, img, img_lengths, cap, cap_lengths, criterion)
        if global_loss_weight:
            cosine = (lambda a, _, b, __: a @ b.t())
            loss = loss + global_loss_weight * self._loss(cosine, pooled(img, img_lengths), None,
                                                          pooled(cap, cap_lengths), None, criterion)
        return loss

    def _loss(self, score, img, img_lengths, cap, cap_lengths, criterion):
        batch = img.shape[0]
        positives = torch.arange(batch, device=img.device)
        if distributed.world_size() == 1:
            rows = score(img, img_lengths, cap, cap_lengths)
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
            rows = score(img, img_lengths, all_cap, all_cap_lengths)
            columns = score(all_img, all_img_lengths, cap, cap_lengths).t()
            positives = positives + sum(sizes[:distributed.rank()])
            total = sum(sizes)
        if criterion.uses_logit_scale:
            scale = self.encoders.logit_scale.exp()
            rows, columns = rows * scale, columns * scale
        return criterion(rows, positives, columns, positives, total)
