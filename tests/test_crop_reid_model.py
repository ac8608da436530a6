"""ReIDCropNet: losses and embeddings on tiny inputs, and a short OIM training run on synthetic Market-1501 crops."""
import os
import uuid

import numpy as np
import pytest
import torch

import person_search
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer

from conftest import REPO_ROOT
from person_search.data.reid_datasets import load_market1501
from person_search.data.reid_mapper import ReIDCropMapper
from person_search.data.synthetic import generate_market1501
from person_search.evaluation import ReIDEvaluator, build_reid_test_loader, inference_on_reid
from person_search.modeling import OIMLoss, SoftmaxIdentityLoss

TINY_REID_CONFIG = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_reid_crop_cpu_instant_test.yaml")


def tiny_reid_cfg(*opts):
    cfg = get_cfg()
    person_search.add_person_search_config(cfg)
    cfg.merge_from_file(TINY_REID_CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg


def _inputs(pids, size=(64, 32)):
    generator = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8), "person_id": p}
        for p in pids
    ]


@pytest.mark.parametrize("loss, loss_type", [("OIM", OIMLoss), ("Softmax", SoftmaxIdentityLoss)])
def test_training_loss_and_inference_embeddings(loss, loss_type):
    torch.manual_seed(0)
    model = build_model(tiny_reid_cfg("MODEL.REID.LOSS", loss))
    assert isinstance(model.identity_loss, loss_type)
    model.train()
    # OIM's lookup table starts at zero (no gradient yet); the first step fills the rows of ids 0, 1, 5
    model(_inputs([0, 1, 5, 1]))
    losses = model(_inputs([0, 1, 5, 1]))
    assert list(losses) == ["loss_reid"]
    assert losses["loss_reid"].ndim == 0 and torch.isfinite(losses["loss_reid"])
    losses["loss_reid"].backward()
    assert model.backbone.stem.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        outputs = model(_inputs([0, 1, 2]))
    assert len(outputs) == 3
    embeddings = torch.stack([o["embedding"] for o in outputs])
    assert embeddings.shape == (3, 32)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_bad_inputs_are_reported():
    model = build_model(tiny_reid_cfg())
    model.eval()
    with pytest.raises(ValueError, match="one size"):
        model(_inputs([0], size=(64, 32)) + _inputs([0], size=(32, 16)))
    model.train()
    with pytest.raises(ValueError, match="no person_id"):
        model([{"image": torch.zeros(3, 64, 32, dtype=torch.uint8), "file_name": "x.jpg"}])
    with pytest.raises(ValueError, match="pids must be -1 .* or in \\[0, 6\\)"):
        model(_inputs([6, 0]))
    with pytest.raises(ValueError, match="one feature"):
        build_model(tiny_reid_cfg("MODEL.RESNETS.OUT_FEATURES", ["res4", "res5"]))


@pytest.fixture
def synthetic_market(tmp_path):
    """Synthetic Market-1501 train crops registered as <prefix>_train, and again as a query and a gallery set.

    Retrieval is measured on the training identities: 20 steps teach those, not unseen ones.
    """
    generate_market1501(str(tmp_path), preset="tiny", num_train_ids=8, num_test_ids=1, images_per_id=(6, 8), seed=3)
    prefix = f"test_synthetic_market_{uuid.uuid4().hex[:8]}"
    train = load_market1501(str(tmp_path), "train")
    DatasetCatalog.register(prefix + "_train", lambda: [dict(d) for d in train])
    for split in ("query", "gallery"):
        DatasetCatalog.register(f"{prefix}_{split}", lambda split=split: [dict(d, reid_split=split) for d in train])
    MetadataCatalog.get(prefix + "_gallery").set(evaluator_type="reid", query_dataset=prefix + "_query")
    yield prefix, len({d["person_id"] for d in train})
    for split in ("train", "query", "gallery"):
        DatasetCatalog.remove(f"{prefix}_{split}")
    MetadataCatalog.remove(prefix + "_gallery")


def _mean_ap(model, cfg, gallery_name):
    evaluator = ReIDEvaluator(MetadataCatalog.get(gallery_name).query_dataset, gallery_name)
    return inference_on_reid(model, build_reid_test_loader(cfg, gallery_name), evaluator)["reid"]["mAP"]


def test_oim_training_improves_retrieval(synthetic_market):
    prefix, num_classes = synthetic_market
    cfg = tiny_reid_cfg(
        "DATASETS.TRAIN", (prefix + "_train",),
        "DATASETS.TEST", (prefix + "_gallery",),
        "MODEL.REID.OIM.NUM_LABELED", num_classes,
        "MODEL.RESNETS.OUT_FEATURES", ["res4"],  # ResNet-18 up to res4: half the CPU time of res5
        "SEED", 0,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    untrained = _mean_ap(model, cfg, prefix + "_gallery")

    loader = build_detection_train_loader(
        cfg, dataset=DatasetCatalog.get(prefix + "_train"), mapper=ReIDCropMapper(cfg, is_train=True)
    )
    trainer = SimpleTrainer(model, loader, build_optimizer(cfg, model))
    trainer.train(0, 20)
    # one loss: SimpleTrainer records it as total_loss (= loss_reid)
    losses = np.array([v for v, _ in trainer.storage.history("total_loss").values()])
    assert losses.shape == (20,) and np.isfinite(losses).all()
    # OIM starts at log(num_classes) (empty lookup table), rises while the table fills, then falls
    assert losses[-5:].mean() < losses[:5].mean()
    trained = _mean_ap(model, cfg, prefix + "_gallery")
    assert trained > untrained
