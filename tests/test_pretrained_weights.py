"""Initialising the R50-C4 model from detectron2 model-zoo weights and from converted torchvision weights."""
import logging
import pickle
import shlex

import numpy as np
import pytest
import torch
import torchvision

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from conftest import REPO_ROOT
from person_search import add_person_search_config
from person_search.checkpoint import convert_torchvision_resnet, save_detectron2_weights


@pytest.fixture(scope="module")
def r50_c4_model():
    cfg = get_cfg()
    add_person_search_config(cfg)
    cfg.merge_from_file(f"{REPO_ROOT}/configs/Base-PersonSearch-C4.yaml")  # a true ResNet-50
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def _c2_name(d2_name):
    """detectron2 ResNet name -> the Caffe2 name used by the model zoo's ImageNet R-50.pkl."""
    if d2_name.startswith("stem.conv1."):
        rest = d2_name[len("stem.conv1."):]
        return {"weight": "conv1_w", "norm.weight": "res_conv1_bn_s", "norm.bias": "res_conv1_bn_b"}.get(rest)
    stage, block, conv, *rest = d2_name.split(".")
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[conv]
    rest = ".".join(rest)
    suffix = {"weight": "_w", "norm.weight": "_bn_s", "norm.bias": "_bn_b"}.get(rest)
    return None if suffix is None else f"{stage}_{block}_{branch}{suffix}"


def _backbone_and_res5(model):
    """detectron2 ResNet names of the model's trunk (res2-res4) and its ROI head's res5, with their tensors."""
    state = model.state_dict()
    names = {}
    for key, value in state.items():
        for prefix in ("backbone.", "roi_heads."):
            if key.startswith(prefix) and (key[len(prefix):].startswith(("stem", "res"))):
                names[key[len(prefix):]] = value
    return names


def test_model_zoo_caffe2_weights_load_into_c4_trunk_and_res5_head(r50_c4_model, tmp_path):
    rng = np.random.default_rng(0)
    d2_params = _backbone_and_res5(r50_c4_model)
    blobs = {}
    for name, value in d2_params.items():
        c2 = _c2_name(name)
        if c2 is not None:
            blobs[c2] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
    blobs["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)  # classifier: unused
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f)  # the ImageNet file is a plain dict of Caffe2 blobs
    DetectionCheckpointer(r50_c4_model).load(str(path))
    state = r50_c4_model.state_dict()
    assert np.array_equal(state["backbone.stem.conv1.weight"].numpy(), blobs["conv1_w"])
    assert np.array_equal(state["backbone.res4.5.conv3.weight"].numpy(), blobs["res4_5_branch2c_w"])
    assert np.array_equal(state["roi_heads.res5.0.shortcut.weight"].numpy(), blobs["res5_0_branch1_w"])
    assert np.array_equal(state["roi_heads.res5.2.conv2.weight"].numpy(), blobs["res5_2_branch2b_w"])


def test_torchvision_resnet50_converts_and_loads(r50_c4_model, tmp_path, caplog):
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    converted = convert_torchvision_resnet(tv.state_dict())
    assert "fc.weight" not in converted and not any("num_batches_tracked" in k for k in converted)
    assert converted["res2.0.shortcut.norm.running_var"].shape == (256,)
    path = tmp_path / "R-50-torchvision.pkl"
    save_detectron2_weights(converted, str(path))
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(r50_c4_model).load(str(path))
    state = r50_c4_model.state_dict()
    tv_state = tv.state_dict()
    assert torch.equal(state["backbone.stem.conv1.weight"], tv_state["conv1.weight"])
    assert torch.equal(state["backbone.stem.conv1.norm.running_mean"], tv_state["bn1.running_mean"])
    assert torch.equal(state["backbone.res3.1.conv2.weight"], tv_state["layer2.1.conv2.weight"])
    assert torch.equal(state["backbone.res4.0.shortcut.norm.weight"], tv_state["layer3.0.downsample.1.weight"])
    assert torch.equal(state["roi_heads.res5.1.conv1.norm.bias"], tv_state["layer4.1.bn1.bias"])
    # the checkpointer names what the file does not cover: the heads and the OIM tables start from scratch
    log = caplog.text
    assert "roi_heads.embedding_head" in log and "roi_heads.identity_loss" in log


def test_conversion_rejects_other_state_dicts():
    with pytest.raises(KeyError, match="torchvision ResNet"):
        convert_torchvision_resnet({"conv1.weight": torch.zeros(1), "head.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="conv1.weight"):
        convert_torchvision_resnet({"fc.weight": torch.zeros(1)})


def test_conversion_tool_reads_training_checkpoints(tmp_path):
    # torchvision's reference training scripts save {"model": DDP-prefixed state dict, "args": Namespace, ...}
    import argparse
    import subprocess
    import sys

    tv = torchvision.models.resnet18(weights=None)
    checkpoint = {"model": {"module." + k: v for k, v in tv.state_dict().items()}, "epoch": 3,
                  "args": argparse.Namespace(lr=0.1)}
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    out = tmp_path / "weights" / "R-18-torchvision.pkl"  # the folder does not exist yet
    result = subprocess.run([sys.executable, f"{REPO_ROOT}/tools/convert_torchvision_resnet.py",
                             str(tmp_path / "checkpoint.pth"), str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    with open(out, "rb") as f:
        weights = pickle.load(f)["model"]
    np.testing.assert_array_equal(weights["res5.1.conv2.weight"], tv.state_dict()["layer4.1.conv2.weight"].numpy())
    # the printed overrides, split as a shell splits them when pasted, merge into a config
    cfg = get_cfg()
    cfg.merge_from_list(shlex.split(result.stdout.splitlines()[-1]))
    assert cfg.MODEL.WEIGHTS == str(out) and cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert cfg.MODEL.PIXEL_MEAN == [123.675, 116.28, 103.53] and cfg.MODEL.PIXEL_STD == [58.395, 57.12, 57.375]
