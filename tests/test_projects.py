"""projects/PersonSearchFPN: its configs on detectron2's model-zoo FPN, a training step and inference of its tiny
model built through the project's own setup, and its train_net.py command line."""
import importlib.util
import os
import subprocess
import sys

import torch
import yaml

import person_search
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO_ROOT
from test_model_e2e import make_input, training_step

PROJECT = os.path.join(REPO_ROOT, "projects", "PersonSearchFPN")
TINY = os.path.join(PROJECT, "configs", "oim_tiny_FPN_cpu.yaml")


def load_train_net(project_dir):
    """A project's train_net.py as a module (projects are not packages)."""
    path = os.path.join(project_dir, "train_net.py")
    name = "_train_net_" + os.path.basename(project_dir)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_r50_config_is_the_model_zoo_detector_plus_the_identity_branch():
    train_net = load_train_net(PROJECT)
    cfg = train_net.load_config(os.path.join(PROJECT, "configs", "oim_R_50_FPN_cuhk_sysu.yaml"))
    # from detectron2's model zoo (not set by the project's yaml)
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    # from the project's yaml
    assert cfg.MODEL.ROI_HEADS.NAME == "ReIDStandardROIHeads" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1
    assert cfg.MODEL.REID.OIM.NUM_LABELED == 5532 and cfg.DATASETS.TRAIN == ("cuhk_sysu_train",)
    assert cfg.SOLVER.STEPS == (40000,) and cfg.INPUT.MIN_SIZE_TRAIN == (600,)


def _flat(node, prefix=""):
    """{"A.B.C": value} of a CfgNode."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_r50_config_equals_the_main_fpn_config():
    # the project's README and yaml: same solver, input, ROI sampling and test settings, so the results compare
    project_yaml = os.path.join(PROJECT, "configs", "oim_R_50_FPN_cuhk_sysu.yaml")
    with open(project_yaml) as f:
        assert yaml.safe_load(f)["VERSION"] == 2  # detectron2 warns about a yaml without one
    project = _flat(load_train_net(PROJECT).load_config(project_yaml))
    main = get_cfg()
    person_search.add_person_search_config(main)
    main.merge_from_file(os.path.join(REPO_ROOT, "configs", "CUHK-SYSU", "oim_R_50_FPN_cuhk_sysu.yaml"))
    main = _flat(main)
    assert set(project) == set(main)
    differing = {key for key in main if project[key] != main[key]}
    # the mask head's keys are unused: both configs set MODEL.MASK_ON False
    assert differing == {"OUTPUT_DIR", "MODEL.ROI_MASK_HEAD.NUM_CONV"} and not main["MODEL.MASK_ON"]


def test_tiny_model_from_project_setup_trains_and_embeds(tmp_path):
    train_net = load_train_net(PROJECT)
    args = default_argument_parser().parse_args(["--config-file", TINY, "OUTPUT_DIR", str(tmp_path)])
    cfg = train_net.setup(args)
    assert cfg.MODEL.RESNETS.DEPTH == 18 and cfg.MODEL.FPN.OUT_CHANNELS == 32 and cfg.MODEL.REID.EMBED_DIM == 32

    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert type(model.roi_heads).__name__ == "ReIDStandardROIHeads"
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    batch = [make_input(1, [[10, 10, 50, 110], [70, 20, 110, 120]], [3, -1]), make_input(2, [[30, 5, 80, 100]], [5])]
    with EventStorage():
        training_step(model, batch, optimizer)
    oim = model.roi_heads.identity_loss
    assert set(oim.lut.norm(dim=1).nonzero().flatten().tolist()) == {3, 5}

    model.eval()
    model.roi_heads.box_predictor.test_score_thresh = 0.0
    with torch.no_grad():
        (out,) = model([make_input(3, [], [])])
    det = out["instances"]
    assert len(det) > 0 and det.pred_embeddings.shape == (len(det), 32)
    assert torch.allclose(det.pred_embeddings.norm(dim=1), torch.ones(len(det)), atol=1e-5)


def test_train_net_help():
    out = subprocess.run(
        [sys.executable, os.path.join(PROJECT, "train_net.py"), "--help"], capture_output=True, text=True, check=True
    )
    assert "--config-file" in out.stdout and "--eval-only" in out.stdout
