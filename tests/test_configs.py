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


def load(path):
    """The config of a yaml as its training script loads it."""
    parts = os.path.relpath(path, REPO_ROOT).split(os.sep)
    if parts[0] == "projects":
        return load_train_net(os.path.join(REPO_ROOT, "projects", parts[1])).load_config(path)
    cfg = get_cfg()
    person_search.add_person_search_config(cfg)
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, REPO_ROOT))
def test_config_loads(path):
    cfg = load(path)
    assert cfg.MODEL.REID.LOSS in ("OIM", "Softmax")
    assert cfg.MODEL.REID.EMBED_DIM > 0


def test_every_trainable_config_has_its_own_output_dir():
    # Two configs sharing OUTPUT_DIR overwrite each other's checkpoints, and --resume would load the other's.
    # Bases (Base-*.yaml) and the quick_schedules test / demo bases are not trained as they are.
    trainable = [p for p in CONFIGS if not os.path.basename(p).startswith("Base-")
                 and "quick_schedules" not in os.path.relpath(p, REPO_ROOT).split(os.sep)]
    output_dirs = {}
    for path in trainable:
        output_dirs.setdefault(os.path.normpath(load(path).OUTPUT_DIR), []).append(os.path.relpath(path, REPO_ROOT))
    assert "output" not in output_dirs, f"configs left at detectron2's default OUTPUT_DIR: {output_dirs['output']}"
    shared = {d: paths for d, paths in output_dirs.items() if len(paths) > 1}
    assert not shared, f"configs sharing an OUTPUT_DIR: {shared}"
    assert len(trainable) > 20


def test_every_reid_key_is_commented():
    source = open(os.path.join(REPO_ROOT, "person_search", "config.py")).read().splitlines()
    for i, line in enumerate(source):
        if line.strip().startswith("_C.") and "= CN()" not in line:
            assert source[i - 1].strip().startswith("#"), f"config.py line {i + 1} has no comment: {line.strip()}"
