"""The ``machine`` field of every benchmark line: where and with which library versions it was measured."""
import os
import platform

import numpy as np
import torch


def machine_info(device=None):
    """Platform, CPU count, torch threads and library versions; the GPU's name for a CUDA ``device``; FAISS's
    version and threads when it is installed."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if device is not None and torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import faiss
    except ImportError:
        info["faiss"] = None
    else:
        info["faiss"] = faiss.__version__
        info["faiss_threads"] = faiss.omp_get_max_threads()
    return info
