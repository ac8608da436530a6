"""Every yaml under configs/ and projects/ loads with the plugin's keys (catches misspelt keys).

A project's yamls are loaded by its own train_net.py (``load_config(path)``, the part of ``setup`` before
freeze/default_setup): they may need a base that the project merges first, such as a detectron2 model-zoo config.
"""
import glob
import os

import pytest

import person_search
from detectron2.config import get_cfg

from conftest import REPO_ROOT
from test_projects import load_train_net

CONFIGS = sorted(
    glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)
    + glob.glob(os.path.join(REPO_ROOT, "projects", "**", "configs", "**", "*.yaml"), recursive=True)
)


def test_configs_exist():
    names = [os.path.relpath(p, REPO_ROOT) for p in CONFIGS]
    assert os.path.join("configs", "Base-PersonSearch-C4.yaml") in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_config_loads(path):
    parts = os.path.relpath(path, REPO_ROOT).split(os.sep)
    if parts[0] == "projects":
        cfg = load_train_net(os.path.join(REPO_ROOT, "projects", parts[1])).load_config(path)
    else:
        cfg = get_cfg()
        person_search.add_person_search_config(cfg)
        cfg.merge_from_file(path)
    assert cfg.MODEL.REID.LOSS in ("OIM", "Softmax")
    assert cfg.MODEL.REID.EMBED_DIM > 0


def test_every_reid_key_is_commented():
    source = open(os.path.join(REPO_ROOT, "person_search", "config.py")).read().splitlines()
    for i, line in enumerate(source):
        if line.strip().startswith("_C.") and "= CN()" not in line:
            assert source[i - 1].strip().startswith("#"), f"config.py line {i + 1} has no comment: {line.strip()}"
