"""ROI heads with an identity branch: the paper's C4 design and an FPN drop-in.

Training: the identity loss is computed on the foreground proposals sampled for the box head, each labelled with
the ``gt_pids`` of its matched ground truth (-1 = unlabeled person). Background proposals are excluded:
``label_and_sample_proposals`` copies every ``gt_*`` field, so they carry the pid of their nearest person.
Inference: ``pred_embeddings`` (N, EMBED_DIM), L2-normalised, computed on the final (regressed) boxes, and on
given boxes in ``forward_with_given_boxes`` (query persons: ``pred_boxes``; ``pred_classes`` 0 is added where
missing). The heads detect one class, person (``MODEL.ROI_HEADS.NUM_CLASSES`` 1).

Built from a config, the heads pool and predict boxes in float32 under autocast (:class:`FullPrecisionPooler`,
:class:`FullPrecisionOutputLayers`); built with explicit arguments, pass those modules for the same behaviour.
"""
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads, StandardROIHeads, build_box_head
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from .embedding_head import IdentityEmbeddingHead
from .identity_losses import build_identity_loss

__all__ = [
    "FullPrecisionOutputLayers",
    "FullPrecisionPooler",
    "ReIDRes5ROIHeads",
    "ReIDStandardROIHeads",
    "foreground_pids",
    "identity_branch_from_config",
]


def foreground_pids(proposals, num_classes):
    """Per-proposal identity labels of sampled proposals, and the mask of foreground ones (both concatenated)."""
    pids, foreground = [], []
    for p in proposals:
        is_fg = (p.gt_classes >= 0) & (p.gt_classes < num_classes)
        # Images without ground truth get no gt_pids from label_and_sample_proposals; all their proposals are
        # background anyway.
        image_pids = p.gt_pids if p.has("gt_pids") else torch.full_like(p.gt_classes, -1)
        pids.append(image_pids)
        foreground.append(is_fg)
    return cat(pids), cat(foreground)


class FullPrecisionPooler(nn.Module):
    """A detectron2 ROIPooler run on float32 copies of the features.

    detectron2's ROIAlign casts the boxes to the features' dtype. Under bf16/fp16 autocast that rounds box
    coordinates to 8 significant bits (steps of 4 px near x = 600, 8 px near 1500): pooled features no longer
    match their boxes, and boxes narrower than a step collapse to zero width and pool zeros. torchvision's
    roi_align computes in float32 under autocast anyway, so the copy only adds a cast. The pooled features are
    returned in the features' dtype: the next layers cast them to it under autocast anyway, and a float32 copy of
    every pooled ROI would cost training memory (+24 % peak for R50-C4 at 900x1500, batch 4, bf16). Holds no
    parameters: checkpoints are unchanged.
    """

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, features, box_lists):
        return self.pooler([x.float() for x in features], box_lists).to(features[0].dtype)


class FullPrecisionOutputLayers(FastRCNNOutputLayers):
    """detectron2's box predictor (class scores and box deltas), computed in float32 under autocast.

    Under bf16 autocast its linear layers and softmax would round detection scores to 8 significant bits (steps of
    1/256 just below 0.5: a detection scoring 0.498 would pass the protocols' 0.5 threshold), and on a CPU the
    scores would even come back as bf16. Two small linear layers on pooled vectors: no measurable cost. Same
    parameters as FastRCNNOutputLayers, so checkpoints are unchanged.
    """

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def full_precision_predictor(cfg, predictor):
    """A :class:`FullPrecisionOutputLayers` with the weights of detectron2's ``predictor``."""
    with torch.random.fork_rng(devices=[]):  # the modules built after it keep their random initialisation
        ours = FullPrecisionOutputLayers(cfg, ShapeSpec(channels=predictor.cls_score.in_features))
    ours.load_state_dict(predictor.state_dict())
    return ours


class _IdentityBranch:
    """What both ReID ROI heads share: the branch's modules, its loss term and the embedding of given boxes.
    A head provides ``_embed(features, boxes) -> (N, D)`` for a non-empty list of per-image Boxes."""

    def _init_identity_branch(self, embedding_head, identity_loss, reid_loss_weight):
        name = type(self).__name__
        if self.num_classes != 1:
            # every foreground proposal is a person to the identity loss (its queue, its lookup table)
            raise ValueError(
                f"{name}: the identity branch treats every detected object as a person: MODEL.ROI_HEADS.NUM_CLASSES "
                f"must be 1 (person), got {self.num_classes}"
            )
        loss_dim = getattr(identity_loss, "embed_dim", embedding_head.embed_dim)
        if loss_dim != embedding_head.embed_dim:
            raise ValueError(
                f"{name}: the embedding head gives {embedding_head.embed_dim}-d embeddings but the identity loss "
                f"expects {loss_dim}-d"
            )
        self.embedding_head = embedding_head
        self.identity_loss = identity_loss
        self.reid_loss_weight = reid_loss_weight

    def _reid_loss(self, embeddings, pids):
        return {"loss_reid": self.reid_loss_weight * self.identity_loss(embeddings, pids)}

    def _attach_embeddings(self, features, instances):
        """Set ``pred_embeddings`` of every instance from its ``pred_boxes``."""
        boxes = [x.pred_boxes for x in instances]
        if sum(len(b) for b in boxes) == 0:
            embeddings = self._no_embeddings(next(iter(features.values())))
        else:
            embeddings = self._embed(features, boxes)
        return _split_embeddings(instances, embeddings)

    def _no_embeddings(self, like):
        return like.new_zeros(0, self.embedding_head.embed_dim, dtype=torch.float32)


def _with_person_classes(instances):
    """detectron2's ``forward_with_given_boxes`` needs ``pred_classes``: given boxes without them are persons."""
    for x in instances:
        if not x.has("pred_classes"):
            x.pred_classes = torch.zeros(len(x), dtype=torch.int64, device=x.pred_boxes.device)
    return instances


def _split_embeddings(instances, embeddings):
    """Set ``pred_embeddings`` of each image's instances from consecutive rows of ``embeddings``."""
    for inst, emb in zip(instances, embeddings.split([len(x) for x in instances])):
        inst.pred_embeddings = emb
    return instances


def identity_branch_from_config(cfg, in_channels):
    """Constructor arguments of the identity branch shared by both ROI heads: embedding head, loss and weight."""
    return {
        "embedding_head": IdentityEmbeddingHead(in_channels, cfg.MODEL.REID.EMBED_DIM, cfg.MODEL.REID.EMBED_NORM),
        "identity_loss": build_identity_loss(cfg),
        "reid_loss_weight": cfg.MODEL.REID.LOSS_WEIGHT,
    }


def _check_gt_pids(targets):
    for t in targets:
        if len(t) and not t.has("gt_pids"):
            raise ValueError(
                "ReID ROI heads need Instances.gt_pids in training targets; use "
                "person_search.data.PersonSearchDatasetMapper (or add gt_pids: -1 for unlabeled persons)"
            )
        if t.has("gt_pids") and t.gt_pids.dtype != torch.int64:
            raise ValueError(f"Instances.gt_pids must be int64 (like gt_classes), got {t.gt_pids.dtype}")


@ROI_HEADS_REGISTRY.register()
class ReIDRes5ROIHeads(_IdentityBranch, Res5ROIHeads):
    """The paper's C4 head: one res5 block shared by the box branch and the identity branch."""

    @configurable
    def __init__(
        self, *, embedding_head, identity_loss, reid_loss_weight=1.0, embed_detections_from="boxes", **kwargs
    ):
        """
        Args:
            embed_detections_from: "boxes" (embed each detection's final box with a second res5 pass) or
                "proposals" (reuse the res5 features of the proposal it was regressed from).
        """
        super().__init__(**kwargs)
        if self.mask_on:
            raise ValueError("ReIDRes5ROIHeads does not support masks: set MODEL.MASK_ON False")
        self._init_identity_branch(embedding_head, identity_loss, reid_loss_weight)
        if embed_detections_from not in ("boxes", "proposals"):
            raise ValueError(
                f"MODEL.REID.EMBED_DETECTIONS_FROM must be 'boxes' or 'proposals', got {embed_detections_from!r}"
            )
        self.embed_detections_from = embed_detections_from

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["pooler"] = FullPrecisionPooler(ret["pooler"])
        ret["box_predictor"] = full_precision_predictor(cfg, ret["box_predictor"])
        res5_out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8  # Res5ROIHeads' res5 widens res4 by 2
        ret.update(identity_branch_from_config(cfg, res5_out_channels))
        ret["embed_detections_from"] = cfg.MODEL.REID.EMBED_DETECTIONS_FROM
        return ret

    def forward(self, images, features, proposals, targets=None):
        del images
        if self.training:
            _check_gt_pids(targets)
            proposals = self.label_and_sample_proposals(proposals, targets)
        del targets

        box_features = self._shared_roi_transform(
            [features[f] for f in self.in_features], [x.proposal_boxes for x in proposals]
        )
        predictions = self.box_predictor(box_features.mean(dim=[2, 3]))

        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            pids, is_fg = foreground_pids(proposals, self.num_classes)
            embeddings = self.embedding_head(box_features[is_fg])
            losses.update(self._reid_loss(embeddings, pids[is_fg]))
            return [], losses

        pred_instances, kept = self.box_predictor.inference(predictions, proposals)
        if self.embed_detections_from == "proposals":
            rows = self._kept_proposal_rows(predictions, proposals, kept)
            embeddings = self.embedding_head(box_features[rows]) if len(rows) else self._no_embeddings(box_features)
            return _split_embeddings(pred_instances, embeddings), {}
        return self.forward_with_given_boxes(features, pred_instances), {}

    def _kept_proposal_rows(self, predictions, proposals, kept):
        """Rows of the batch's proposal features that the detections came from.

        detectron2's ``fast_rcnn_inference`` numbers the kept proposals of an image after dropping those with
        non-finite boxes or scores; this maps them back to the image's proposals, then to the batch's rows.
        """
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        scores = self.box_predictor.predict_probs(predictions, proposals)
        rows, start = [], 0
        for b, s, k, p in zip(boxes, scores, kept, proposals):
            finite = (torch.isfinite(b).all(dim=1) & torch.isfinite(s).all(dim=1)).nonzero().squeeze(1)
            rows.append(start + finite[k])
            start += len(p)
        return torch.cat(rows)

    def forward_with_given_boxes(self, features, instances):
        """Embed ``instances[i].pred_boxes`` (final detections or given query boxes)."""
        assert not self.training
        instances = super().forward_with_given_boxes(features, _with_person_classes(instances))
        return self._attach_embeddings(features, instances)

    def _embed(self, features, boxes):
        return self.embedding_head(self._shared_roi_transform([features[f] for f in self.in_features], boxes))


@ROI_HEADS_REGISTRY.register()
class ReIDStandardROIHeads(_IdentityBranch, StandardROIHeads):
    """StandardROIHeads (e.g. FPN) plus an identity branch.

    The identity branch pools the foreground proposals (training) or final boxes (inference) with its own
    ROIPooler, runs them through the box head (shared weights) or a separate tower (``MODEL.REID.HEAD_NAME``),
    then the embedding head.
    """

    @configurable
    def __init__(
        self, *, reid_pooler, reid_head=None, embedding_head, identity_loss, reid_loss_weight=1.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.reid_pooler = reid_pooler
        self.reid_head = reid_head  # None: share self.box_head
        self._init_identity_branch(embedding_head, identity_loss, reid_loss_weight)

    @classmethod
    def from_config(cls, cfg, input_shape):
        if cfg.MODEL.REID.EMBED_DETECTIONS_FROM != "boxes":
            raise ValueError(
                "ReIDStandardROIHeads embeds detections from their boxes only; MODEL.REID.EMBED_DETECTIONS_FROM "
                f"must be 'boxes', got {cfg.MODEL.REID.EMBED_DETECTIONS_FROM!r}"
            )
        ret = super().from_config(cfg, input_shape)
        ret["box_pooler"] = FullPrecisionPooler(ret["box_pooler"])
        ret["box_predictor"] = full_precision_predictor(cfg, ret["box_predictor"])
        ret.update(cls._init_reid_head(cfg, input_shape, ret["box_head"]))
        return ret

    @classmethod
    def _init_reid_head(cls, cfg, input_shape, box_head):
        in_features = cfg.MODEL.ROI_HEADS.IN_FEATURES
        resolution = cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
        in_channels = input_shape[in_features[0]].channels
        reid_pooler = FullPrecisionPooler(
            ROIPooler(
                output_size=resolution,
                scales=tuple(1.0 / input_shape[k].stride for k in in_features),
                sampling_ratio=cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
                pooler_type=cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE,
            )
        )
        pooled_shape = ShapeSpec(channels=in_channels, height=resolution, width=resolution)
        reid_head = None
        if cfg.MODEL.REID.HEAD_NAME:
            head_cfg = cfg.clone()
            head_cfg.defrost()
            head_cfg.MODEL.ROI_BOX_HEAD.NAME = cfg.MODEL.REID.HEAD_NAME
            reid_head = build_box_head(head_cfg, pooled_shape)
            tower_shape = reid_head.output_shape
        else:
            tower_shape = box_head.output_shape
        tower_channels = tower_shape.channels * (tower_shape.height or 1) * (tower_shape.width or 1)
        return {
            "reid_pooler": reid_pooler,
            "reid_head": reid_head,
            **identity_branch_from_config(cfg, tower_channels),
        }

    def _embed(self, features, boxes):
        x = self.reid_pooler([features[f] for f in self.box_in_features], boxes)
        x = (self.reid_head or self.box_head)(x)
        return self.embedding_head(x)

    def _forward_reid(self, features, proposals):
        pids, is_fg = foreground_pids(proposals, self.num_classes)
        fg_boxes = [
            p.proposal_boxes[(p.gt_classes >= 0) & (p.gt_classes < self.num_classes)] for p in proposals
        ]
        embeddings = self._embed(features, fg_boxes)
        return self._reid_loss(embeddings, pids[is_fg])

    def forward(self, images, features, proposals, targets=None):
        if not self.training:
            return super().forward(images, features, proposals, targets)
        _check_gt_pids(targets)
        del images
        proposals = self.label_and_sample_proposals(proposals, targets)
        del targets
        losses = self._forward_box(features, proposals)
        losses.update(self._forward_mask(features, proposals))
        losses.update(self._forward_keypoint(features, proposals))
        losses.update(self._forward_reid(features, proposals))
        return proposals, losses

    def forward_with_given_boxes(self, features, instances):
        """Embed ``instances[i].pred_boxes`` (final detections or given query boxes)."""
        instances = super().forward_with_given_boxes(features, _with_person_classes(instances))
        return self._attach_embeddings(features, instances)
