"""ReID ROI heads: which proposals reach the identity loss, and embeddings at inference."""
import pytest
import torch
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, build_roi_heads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import TINY_FPN_CONFIG, tiny_cfg
from person_search.modeling import OIMLoss

IMAGE_SIZE = (96, 128)


class RecordingLoss(nn.Module):
    """Identity loss that records what it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, features, pids):
        self.calls.append((features.detach(), pids.clone()))
        return features.sum() * 0.0 + 1.5


def build_head(name):
    opts = ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64, "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0)
    if name == "ReIDStandardROIHeads":
        cfg = tiny_cfg(*opts, config_file=TINY_FPN_CONFIG)
        shapes = {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(2, 6)}
    else:
        cfg = tiny_cfg(*opts)
        shapes = {"res4": ShapeSpec(channels=256, stride=16)}
    torch.manual_seed(0)
    head = build_roi_heads(cfg, shapes)
    features = {
        k: torch.rand(2, s.channels, IMAGE_SIZE[0] // s.stride + 1, IMAGE_SIZE[1] // s.stride + 1)
        for k, s in shapes.items()
    }
    return head, features


def targets_and_proposals():
    # image 0: a labeled person (pid 3) and an unlabeled one; image 1: no ground truth at all
    target0 = Instances(IMAGE_SIZE)
    target0.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 80.0], [70.0, 5.0, 110.0, 90.0]]))
    target0.gt_classes = torch.zeros(2, dtype=torch.long)
    target0.gt_pids = torch.tensor([3, -1])
    target1 = Instances(IMAGE_SIZE)
    target1.gt_boxes = Boxes(torch.zeros(0, 4))
    target1.gt_classes = torch.zeros(0, dtype=torch.long)
    target1.gt_pids = torch.zeros(0, dtype=torch.long)

    proposals = []
    for boxes in (
        # near the labeled person, near the unlabeled person, and background far from both
        [[11.0, 11.0, 41.0, 79.0], [71.0, 6.0, 109.0, 88.0], [45.0, 60.0, 60.0, 95.0]],
        [[10.0, 10.0, 50.0, 50.0]],
    ):
        p = Instances(IMAGE_SIZE)
        p.proposal_boxes = Boxes(torch.tensor(boxes))
        p.objectness_logits = torch.zeros(len(boxes))
        proposals.append(p)
    return [target0, target1], proposals


@pytest.mark.parametrize("name", ["ReIDRes5ROIHeads", "ReIDStandardROIHeads"])
def test_identity_loss_sees_foreground_only_with_matched_pids(name):
    head, features = build_head(name)
    head.identity_loss = RecordingLoss()
    head.reid_loss_weight = 2.0
    targets, proposals = targets_and_proposals()
    head.train()
    with EventStorage():
        _, losses = head(None, features, proposals, targets)
    assert losses["loss_reid"].item() == pytest.approx(3.0)  # weight 2 x recorded loss 1.5
    assert {"loss_cls", "loss_box_reg"} <= set(losses)
    (features_seen, pids_seen), = head.identity_loss.calls
    # foreground = the 2 near proposals + the 2 ground-truth boxes appended as proposals; the background
    # proposal (which inherits pid 3 or -1 from its nearest person) and image 1 contribute nothing
    assert sorted(pids_seen.tolist()) == [-1, -1, 3, 3]
    assert features_seen.shape == (4, 32)
    assert torch.allclose(features_seen.norm(dim=1), torch.ones(4), atol=1e-5)


def test_missing_gt_pids_is_a_clear_error():
    head, features = build_head("ReIDRes5ROIHeads")
    targets, proposals = targets_and_proposals()
    targets[0].remove("gt_pids")
    with EventStorage(), pytest.raises(ValueError, match="gt_pids"):
        head(None, features, proposals, targets)


@pytest.mark.parametrize("name", ["ReIDRes5ROIHeads", "ReIDStandardROIHeads"])
def test_inference_embeddings_are_unit_norm_and_aligned_with_boxes(name):
    head, features = build_head(name)
    head.box_predictor.test_score_thresh = 0.0
    _, proposals = targets_and_proposals()
    head.eval()
    with torch.no_grad():
        detections, _ = head(None, features, proposals)
    assert len(detections[0]) > 1
    for det in detections:
        assert det.pred_embeddings.shape == (len(det), 32)
        if len(det):
            assert torch.allclose(det.pred_embeddings.norm(dim=1), torch.ones(len(det)), atol=1e-5)

    # the given-boxes path on the same boxes in reversed order returns the same embeddings, reversed
    given = []
    for det in detections:
        inst = Instances(IMAGE_SIZE)
        order = torch.arange(len(det) - 1, -1, -1)
        inst.pred_boxes = det.pred_boxes[order]
        inst.pred_classes = det.pred_classes[order]
        given.append(inst)
    with torch.no_grad():
        embedded = head.forward_with_given_boxes(features, given)
    for det, emb in zip(detections, embedded):
        assert torch.allclose(emb.pred_embeddings, det.pred_embeddings.flip(0), atol=1e-5)


@pytest.mark.parametrize("name", ["ReIDRes5ROIHeads", "ReIDStandardROIHeads"])
def test_bf16_autocast_inference_returns_fp32_embeddings_close_to_fp32(name):
    head, features = build_head(name)
    head.eval()
    given = []
    # the last box is narrower than bfloat16's step at x = 110 (0.5 px): it must not collapse to zero width
    boxes_per_image = (
        [[10.0, 10.0, 40.0, 80.0], [70.0, 5.0, 110.0, 90.0]],
        [[20.0, 30.0, 60.0, 90.0], [110.8, 35.4, 110.9, 90.0]],
    )
    for boxes in boxes_per_image:
        inst = Instances(IMAGE_SIZE)
        inst.pred_boxes = Boxes(torch.tensor(boxes))
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.long)
        given.append(inst)
    with torch.no_grad():
        fp32 = head.forward_with_given_boxes(features, [x[:] for x in given])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = head.forward_with_given_boxes(features, [x[:] for x in given])
    for a, b in zip(fp32, bf16):
        assert b.pred_embeddings.dtype == torch.float32
        assert torch.allclose(b.pred_embeddings.norm(dim=1), torch.ones(len(b)), atol=1e-5)
        # bfloat16 keeps 8 significant bits: components of 32-d unit vectors agree to a few 1e-3
        assert (a.pred_embeddings - b.pred_embeddings).abs().max() < 0.05
        assert (a.pred_embeddings * b.pred_embeddings).sum(dim=1).min() > 0.99


def test_given_boxes_with_no_boxes():
    head, features = build_head("ReIDRes5ROIHeads")
    head.eval()
    empty = Instances(IMAGE_SIZE)
    empty.pred_boxes = Boxes(torch.zeros(0, 4))
    empty.pred_classes = torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        (out,) = head.forward_with_given_boxes({k: v[:1] for k, v in features.items()}, [empty])
    assert out.pred_embeddings.shape == (0, 32)


def test_embedding_head_single_sample_in_training_uses_running_stats():
    from person_search.modeling import IdentityEmbeddingHead

    emb = IdentityEmbeddingHead(8, 4).train()
    out = emb(torch.rand(1, 8, 3, 3))
    assert out.shape == (1, 4) and torch.allclose(out.norm(dim=1), torch.ones(1))
    assert emb(torch.rand(0, 8)).shape == (0, 4)
    assert torch.allclose(emb(torch.rand(5, 8)).norm(dim=1), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError, match="EMBED_NORM"):
        IdentityEmbeddingHead(8, 4, norm="LN")


def test_full_precision_pooler_pools_exact_boxes_and_keeps_the_features_dtype():
    from detectron2.modeling.poolers import ROIPooler

    from person_search.modeling.roi_heads import FullPrecisionPooler

    pooler = ROIPooler(output_size=4, scales=(1.0 / 16,), sampling_ratio=0, pooler_type="ROIAlignV2")
    features = torch.randn(1, 3, 8, 100).to(torch.bfloat16)  # a 128 x 1600 image at stride 16
    # bfloat16's step near x = 1500 is 8 px: rounded, this 3-px-wide box would collapse to zero width
    boxes = [Boxes(torch.tensor([[1500.0, 10.0, 1503.0, 120.0], [20.0, 5.0, 300.0, 100.0]]))]
    pooled = FullPrecisionPooler(pooler)([features], boxes)
    assert pooled.dtype == torch.bfloat16
    assert torch.equal(pooled, pooler([features.float()], boxes).to(torch.bfloat16))
    assert pooled[0].abs().sum() > 0


def test_embedding_head_projects_and_normalises_in_fp32_under_autocast():
    from person_search.modeling import IdentityEmbeddingHead

    head = IdentityEmbeddingHead(64, 16).eval()
    torch.manual_seed(0)
    features = torch.rand(8, 64, 3, 3) + 4.0  # post-ReLU-like: a large common part, a small spread
    with torch.no_grad():
        projected = head.projection(features.mean(dim=(2, 3)))
        # converged running statistics: the mean is tens of times the spread it leaves (a bf16 projection then
        # differs from fp32 by ~0.09 per component here)
        head.norm.running_mean.copy_(projected.mean(0))
        head.norm.running_var.copy_(projected.var(0))
        fp32 = head(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = head(features)
    assert autocast.dtype == torch.float32
    assert torch.allclose(autocast, fp32, atol=1e-6)  # no rounding inside the head


@pytest.mark.parametrize("name", ["ReIDRes5ROIHeads", "ReIDStandardROIHeads"])
def test_box_predictor_scores_in_fp32_under_autocast(name):
    head, _ = build_head(name)
    predictor = head.box_predictor.eval()
    torch.manual_seed(0)
    x = torch.randn(6, predictor.cls_score.in_features).bfloat16()  # what the box branch gives under bf16
    with torch.no_grad():
        fp32_scores, fp32_deltas = predictor(x.float())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores, deltas = predictor(x)
    assert scores.dtype == deltas.dtype == torch.float32
    assert torch.equal(scores, fp32_scores) and torch.equal(deltas, fp32_deltas)


def test_full_precision_predictor_keeps_detectron2s_weights_and_random_stream():
    from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

    from person_search.modeling.roi_heads import full_precision_predictor

    cfg = tiny_cfg()
    torch.manual_seed(0)
    original = FastRCNNOutputLayers(cfg, ShapeSpec(channels=16))
    after_original = torch.rand(1)
    torch.manual_seed(0)
    ours = full_precision_predictor(cfg, FastRCNNOutputLayers(cfg, ShapeSpec(channels=16)))
    assert torch.equal(torch.rand(1), after_original)
    assert ours.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), original.state_dict().values()))


def test_c4_detections_embedded_from_their_proposals():
    head, features = build_head("ReIDRes5ROIHeads")
    head.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():  # regress every box by 20 % of its width and 10 % of its height
        head.box_predictor.bbox_pred.bias.copy_(torch.tensor([2.0, 1.0, 0.0, 0.0]))
    head.eval()
    _, proposals = targets_and_proposals()
    # a proposal with a non-finite box first: detectron2 drops it before numbering the kept proposals
    boxes0 = torch.cat([torch.tensor([[float("nan"), 0.0, 5.0, 5.0]]), proposals[0].proposal_boxes.tensor])
    proposals[0] = Instances(IMAGE_SIZE, proposal_boxes=Boxes(boxes0), objectness_logits=torch.zeros(len(boxes0)))
    with torch.no_grad():
        from_boxes, _ = head(None, features, [p[:] for p in proposals])
        head.embed_detections_from = "proposals"
        from_proposals, _ = head(None, features, [p[:] for p in proposals])
        # expected: each detection's embedding is its source proposal's (found by its regressed box)
        source = [p.proposal_boxes.tensor[1:] if i == 0 else p.proposal_boxes.tensor for i, p in enumerate(proposals)]
        regressed = head.box_predictor.predict_boxes(
            head.box_predictor(
                head._shared_roi_transform([features["res4"]], [Boxes(s) for s in source]).mean(dim=[2, 3])
            ),
            [Instances(IMAGE_SIZE, proposal_boxes=Boxes(s)) for s in source],
        )
    assert all(len(d) for d in from_proposals)
    origins = []
    for a, b, src, reg in zip(from_boxes, from_proposals, source, regressed):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor) and torch.equal(a.scores, b.scores)
        # the proposal each detection was regressed from: the one whose regressed box it is
        origins.append(Boxes(src[torch.cdist(b.pred_boxes.tensor, reg).argmin(dim=1)]))
    with torch.no_grad():
        expected = head._embed(features, origins)
    assert torch.allclose(torch.cat([d.pred_embeddings for d in from_proposals]), expected, atol=1e-5)
    assert not torch.allclose(from_boxes[0].pred_embeddings, from_proposals[0].pred_embeddings, atol=1e-3)


def test_c4_embedding_from_proposals_without_detections():
    head, features = build_head("ReIDRes5ROIHeads")
    head.embed_detections_from = "proposals"
    head.box_predictor.test_score_thresh = 1.0  # nothing scores above it
    head.eval()
    _, proposals = targets_and_proposals()
    with torch.no_grad():
        detections, _ = head(None, features, proposals)
    for det in detections:
        assert len(det) == 0
        assert det.pred_embeddings.shape == (0, 32) and det.pred_embeddings.dtype == torch.float32


def test_fpn_head_refuses_embedding_from_proposals():
    cfg = tiny_cfg("MODEL.REID.EMBED_DETECTIONS_FROM", "proposals", config_file=TINY_FPN_CONFIG)
    with pytest.raises(ValueError, match="EMBED_DETECTIONS_FROM"):
        build_roi_heads(cfg, {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(2, 6)})
    with pytest.raises(ValueError, match="'boxes' or 'proposals'"):
        build_roi_heads(tiny_cfg("MODEL.REID.EMBED_DETECTIONS_FROM", "rois"), {"res4": ShapeSpec(channels=256, stride=16)})


def test_gt_pids_must_be_int64():
    head, features = build_head("ReIDStandardROIHeads")
    targets, proposals = targets_and_proposals()
    targets[0].gt_pids = targets[0].gt_pids.int()
    with EventStorage(), pytest.raises(ValueError, match="gt_pids must be int64 .* got torch.int32"):
        head(None, features, proposals, targets)


@pytest.mark.parametrize("name", ["ReIDRes5ROIHeads", "ReIDStandardROIHeads"])
def test_given_boxes_without_classes_are_persons(name):
    head, features = build_head(name)
    head.eval()
    boxes = Boxes(torch.tensor([[10.0, 10.0, 40.0, 80.0], [70.0, 5.0, 110.0, 90.0]]))
    with_classes, without = Instances(IMAGE_SIZE), Instances(IMAGE_SIZE)
    with_classes.pred_boxes, without.pred_boxes = boxes, boxes.clone()
    with_classes.pred_classes = torch.zeros(2, dtype=torch.long)
    one_image = {k: v[:1] for k, v in features.items()}
    with torch.no_grad():
        (a,) = head.forward_with_given_boxes(one_image, [with_classes])
        (b,) = head.forward_with_given_boxes(one_image, [without])
    assert b.pred_classes.tolist() == [0, 0]
    assert torch.equal(a.pred_embeddings, b.pred_embeddings)


@pytest.mark.parametrize(
    "config_file, shapes",
    [(None, {"res4": ShapeSpec(channels=256, stride=16)}),
     (TINY_FPN_CONFIG, {f"p{i}": ShapeSpec(channels=32, stride=2**i) for i in range(2, 6)})],
)
def test_heads_refuse_what_the_identity_branch_cannot_do(config_file, shapes):
    kwargs = {"config_file": config_file} if config_file else {}
    with pytest.raises(ValueError, match="NUM_CLASSES must be 1 \\(person\\), got 3"):
        build_roi_heads(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", 3, **kwargs), shapes)
    # explicit arguments (detectron2's @configurable without a config), with a loss of another dimension
    cfg = tiny_cfg(**kwargs)
    head_class = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    args = head_class.from_config(cfg, shapes)
    args["identity_loss"] = OIMLoss(embed_dim=16, num_labeled=4, queue_size=2)
    with pytest.raises(ValueError, match="embedding head gives 32-d embeddings but the identity loss expects 16-d"):
        head_class(**args)
    if config_file is None:
        with pytest.raises(ValueError, match="does not support masks: set MODEL.MASK_ON False"):
            build_roi_heads(tiny_cfg("MODEL.MASK_ON", True, **kwargs), shapes)
