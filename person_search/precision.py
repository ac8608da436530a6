"""Mixed precision settings of the config: ``SOLVER.AMP_DTYPE`` (training) and ``TEST.AMP_DTYPE`` (inference)."""
import contextlib

import torch

__all__ = ["PRECISION_FLAGS", "amp_dtype", "autocast", "inference_autocast"]

_DTYPES = {"": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Command-line ``--precision`` values and the TEST.AMP_DTYPE each one sets.
PRECISION_FLAGS = {"fp32": "", "bf16": "bf16", "fp16": "fp16"}


def amp_dtype(name, key):
    """The torch dtype named ``name`` ("" / "bf16" / "fp16"), None for "" (fp32); ``key`` names the config key."""
    if name not in _DTYPES:
        raise ValueError(f"{key} must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def autocast(device, dtype):
    """``torch.autocast`` on ``device``'s type with ``dtype``; a no-op context for ``dtype`` None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def inference_autocast(cfg):
    """The autocast context of ``cfg.TEST.AMP_DTYPE`` for a model on ``cfg.MODEL.DEVICE``.

    The person-search ROI heads return boxes, scores and embeddings in float32 under it too.
    """
    return autocast(cfg.MODEL.DEVICE, amp_dtype(cfg.TEST.AMP_DTYPE, "TEST.AMP_DTYPE"))
