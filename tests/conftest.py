import os

import pytest
import torch

import person_search  # noqa: F401  (adapts detectron2 and registers the plugin before any detectron2 import)
from detectron2.config import get_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_C4_cpu_instant_test.yaml")

torch.set_num_threads(2)


def tiny_cfg(*opts):
    """The tiny CPU C4 config, with optional overrides (KEY, VALUE, ...)."""
    cfg = get_cfg()
    person_search.add_person_search_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(list(opts))
    return cfg


# FPN variant of the tiny model (what configs/FPN and projects/ use, shrunk).
TINY_FPN_OPTS = (
    "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
    "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.IN_FEATURES", ["res2", "res3", "res4", "res5"],
    "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.RPN.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"],
    "MODEL.ANCHOR_GENERATOR.SIZES", [[16], [32], [64], [128], [256]],
    "MODEL.ROI_HEADS.NAME", "ReIDStandardROIHeads",
    "MODEL.ROI_HEADS.IN_FEATURES", ["p2", "p3", "p4", "p5"],
    "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
    "MODEL.ROI_BOX_HEAD.NUM_FC", 2,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7,
)


@pytest.fixture
def cfg_factory():
    return tiny_cfg


@pytest.fixture(scope="session")
def synthetic_cuhk_sysu(tmp_path_factory):
    """A tiny synthetic CUHK-SYSU written in the real format, registered as ``test_synthetic_{train,gallery,query}``.

    Returns (dataset root folder, name prefix).
    """
    from person_search.data import register_cuhk_sysu
    from person_search.data.synthetic import generate_cuhk_sysu

    root = tmp_path_factory.mktemp("datasets")
    generate_cuhk_sysu(str(root / "CUHK-SYSU"), preset="tiny", seed=0)
    register_cuhk_sysu(str(root), prefix="test_synthetic", folder="CUHK-SYSU")
    return root / "CUHK-SYSU", "test_synthetic"
