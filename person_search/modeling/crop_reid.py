"""``ReIDCropNet``: OIM (or softmax) identity learning on pre-cropped pedestrians, the classic re-ID setting.

backbone (one feature map, e.g. ResNet res5) -> global average pooling -> :class:`IdentityEmbeddingHead`
(linear -> BN -> L2 normalisation) -> the identity loss of ``cfg.MODEL.REID.LOSS``: the same embedding head and
loss modules as the person-search ROI heads, so crop re-ID results measure the loss on its own.
"""
import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from torch import nn

from .embedding_head import IdentityEmbeddingHead
from .identity_losses import build_identity_loss

__all__ = ["ReIDCropNet"]


@META_ARCH_REGISTRY.register()
class ReIDCropNet(nn.Module):
    """Embeds whole crops; trains with ``{"loss_reid": ...}``, infers ``[{"embedding": (D,) tensor}]``.

    Inputs are the records of :class:`person_search.data.reid_mapper.ReIDCropMapper`: ``image`` (C, H, W) of one
    common size and, when training, ``person_id`` (0..num_classes-1, or -1 for an unlabeled crop).
    """

    @configurable
    def __init__(self, *, backbone: Backbone, in_feature, embedding_head, identity_loss, loss_weight,
                 pixel_mean, pixel_std):
        """
        Args:
            backbone: a detectron2 backbone.
            in_feature: name of the backbone output that is pooled into the embedding.
            embedding_head: maps (N, C, H, W) features to (N, D) L2-normalised embeddings.
            identity_loss: ``loss(embeddings, person_ids)``, e.g. OIMLoss or SoftmaxIdentityLoss.
            loss_weight: multiplies the identity loss.
            pixel_mean, pixel_std: per-channel normalisation of the input images.
        """
        super().__init__()
        if in_feature not in backbone.output_shape():
            raise ValueError(
                f"ReIDCropNet: backbone has no output {in_feature!r}, it gives {sorted(backbone.output_shape())}"
            )
        self.backbone = backbone
        self.in_feature = in_feature
        self.embedding_head = embedding_head
        self.identity_loss = identity_loss
        self.loss_weight = loss_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        outputs = backbone.output_shape()
        if len(outputs) != 1:
            raise ValueError(
                f"ReIDCropNet pools one backbone feature map; the backbone gives {sorted(outputs)}: set "
                "MODEL.RESNETS.OUT_FEATURES to one feature, e.g. ['res5']"
            )
        (in_feature, shape), = outputs.items()
        return {
            "backbone": backbone,
            "in_feature": in_feature,
            "embedding_head": IdentityEmbeddingHead(shape.channels, cfg.MODEL.REID.EMBED_DIM, cfg.MODEL.REID.EMBED_NORM),
            "identity_loss": build_identity_loss(cfg),
            "loss_weight": cfg.MODEL.REID.LOSS_WEIGHT,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs):
        """(N, C, H, W) normalised float batch; crops must share one size (the mapper resizes them)."""
        sizes = {tuple(x["image"].shape) for x in batched_inputs}
        if len(sizes) != 1:
            raise ValueError(
                f"ReIDCropNet: crops in a batch must have one size (ReIDCropMapper resizes them), got {sorted(sizes)}"
            )
        images = torch.stack([x["image"] for x in batched_inputs]).to(self.device, non_blocking=True)
        return (images.float() - self.pixel_mean) / self.pixel_std

    def embed(self, batched_inputs):
        """(N, D) L2-normalised embeddings of the input crops."""
        features = self.backbone(self.preprocess_image(batched_inputs))[self.in_feature]
        return self.embedding_head(features)  # global average pooling happens in the head

    def forward(self, batched_inputs):
        embeddings = self.embed(batched_inputs)
        if not self.training:
            return [{"embedding": e} for e in embeddings]
        for x in batched_inputs:
            if "person_id" not in x:
                raise ValueError(f"ReIDCropNet training input '{x.get('file_name')}' has no person_id")
        pids = torch.tensor([x["person_id"] for x in batched_inputs], dtype=torch.int64, device=self.device)
        return {"loss_reid": self.loss_weight * self.identity_loss(embeddings, pids)}
