import os

import pytest
import torch

import person_search  # noqa: F401  (adapts detectron2 and registers the plugin before any detectron2 import)
from detectron2.config import get_cfg

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_C4_cpu_instant_test.yaml")
TINY_FPN_CONFIG = os.path.join(REPO_ROOT, "configs", "quick_schedules", "oim_tiny_FPN_cpu_instant_test.yaml")

torch.set_num_threads(2)


def tiny_cfg(*opts, config_file=TINY_CONFIG):
    """The tiny CPU C4 config (or ``config_file``), with optional overrides (KEY, VALUE, ...)."""
    cfg = get_cfg()
    person_search.add_person_search_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


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
