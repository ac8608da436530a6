"""Pretrained backbone weights: torchvision ResNet state dicts -> detectron2's model-zoo (.pkl) format.

detectron2's DetectionCheckpointer already reads its model-zoo files (e.g. the ImageNet ``R-50.pkl`` in Caffe2
naming) and maps them onto a model by name suffix, which also places ``res5`` inside the C4 ROI head. A torchvision
ResNet state dict uses other names; :func:`convert_torchvision_resnet` renames it so that the same loading path
works. Models initialised from torchvision weights expect RGB input normalised as torchvision does: see
``TORCHVISION_INPUT_CONFIG``.
"""
import pickle
import re

import torch

__all__ = ["convert_torchvision_resnet", "resnet_state_dict", "save_detectron2_weights", "TORCHVISION_INPUT_CONFIG"]

# Config overrides for backbones initialised from torchvision ImageNet weights (pixel values in 0..255).
TORCHVISION_INPUT_CONFIG = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
}

_LAYER = re.compile(r"^layer(\d)\.(\d+)\.(.*)$")


def _rename(name):
    """One torchvision ResNet parameter name in detectron2's ResNet naming, or None for the classifier."""
    if name.startswith("fc."):
        return None
    if name.startswith("conv1."):
        return "stem.conv1." + name[len("conv1."):]
    if name.startswith("bn1."):
        return "stem.conv1.norm." + name[len("bn1."):]
    match = _LAYER.match(name)
    if match is None:
        raise KeyError(f"'{name}' is not a torchvision ResNet parameter name")
    stage, block, rest = int(match.group(1)) + 1, match.group(2), match.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{stage}.{block}.{rest}"


def resnet_state_dict(checkpoint):
    """The ResNet parameters of a loaded torchvision checkpoint: a plain state dict, or a training checkpoint
    holding it under ``model`` / ``state_dict`` (torchvision's reference scripts), with DistributedDataParallel's
    ``module.`` prefix removed."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {name[len("module."):] if name.startswith("module.") else name: value for name, value in checkpoint.items()}


def convert_torchvision_resnet(state_dict):
    """torchvision ResNet ``state_dict`` -> {detectron2 name: numpy array}, classifier and counters dropped."""
    converted = {}
    for name, value in state_dict.items():
        if name.endswith("num_batches_tracked"):
            continue
        new_name = _rename(name)
        if new_name is not None:
            converted[new_name] = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    if "stem.conv1.weight" not in converted:
        raise ValueError("not a torchvision ResNet state dict: it has no 'conv1.weight'")
    return converted


def save_detectron2_weights(weights, path, author="torchvision"):
    """Write ``weights`` ({name: array}) as a detectron2 model-zoo .pkl that DetectionCheckpointer loads by name
    suffix (``matching_heuristics``)."""
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": author, "matching_heuristics": True}, f)
