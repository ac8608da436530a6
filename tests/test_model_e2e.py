"""A full GeneralizedRCNN with each ReID ROI head: training steps and inference on a tiny CPU model."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import TINY_CONFIG, TINY_FPN_CONFIG, tiny_cfg

H, W = 128, 160


def make_input(seed, boxes, pids):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((H, W))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).view(-1, 4))
    inst.gt_classes = torch.zeros(len(pids), dtype=torch.long)
    inst.gt_pids = torch.tensor(pids, dtype=torch.long)
    image = torch.randint(0, 256, (3, H, W), dtype=torch.uint8, generator=g)
    return {"image": image, "instances": inst, "height": H, "width": W}


def training_step(model, batch, optimizer):
    """One SGD step; checks the losses of the person-search model are all there and finite."""
    losses = model(batch)
    assert {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "loss_reid"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()


MODELS = {"C4": TINY_CONFIG, "FPN": TINY_FPN_CONFIG}


@pytest.mark.parametrize("variant", sorted(MODELS))
def test_training_steps_then_inference(variant):
    cfg = tiny_cfg(config_file=MODELS[variant])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    oim = model.roi_heads.identity_loss
    batches = [
        [make_input(1, [[10, 10, 50, 110], [70, 20, 110, 120]], [3, -1]), make_input(2, [[30, 5, 80, 100]], [5])],
        # a batch with an image without any person and one with only unlabeled persons
        [make_input(3, [], []), make_input(4, [[20, 20, 60, 120]], [-1])],
    ]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with EventStorage():
        for batch in batches:
            training_step(model, batch, optimizer)
    # labeled persons 3 and 5 have lookup-table rows now; unlabeled persons went to the queue
    assert set(oim.lut.norm(dim=1).nonzero().flatten().tolist()) == {3, 5}
    assert int(oim.queue_ptr) > 0
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("embedding_head" in k for k in changed) and any("backbone" in k for k in changed)

    model.eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        (out,) = model([make_input(5, [], [])])
        det = out["instances"]
        assert det.pred_embeddings.shape == (len(det), 32)
        assert len(det) > 0 and torch.allclose(det.pred_embeddings.norm(dim=1), torch.ones(len(det)), atol=1e-5)

        # the query path: given boxes in a resized image come back in original coordinates with embeddings
        query = make_input(6, [], [])
        query["height"], query["width"] = 2 * H, 2 * W
        given = Instances((H, W))
        given.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 110.0], [60.0, 30.0, 100.0, 120.0]]))
        given.pred_classes = torch.zeros(2, dtype=torch.long)
        given.scores = torch.ones(2)
        expected_boxes = 2 * given.pred_boxes.tensor  # detectron2's postprocessing rescales given boxes in place
        (qout,) = model.inference([query], detected_instances=[given])
        q = qout["instances"]
        assert q.pred_embeddings.shape == (2, 32)
        assert torch.allclose(q.pred_boxes.tensor, expected_boxes)
