"""Training hooks of the plugin."""
import random

import numpy as np
import torch

from detectron2.engine import HookBase

__all__ = ["RandomStateCheckpointHook"]


class RandomStateCheckpointHook(HookBase):
    """Saves the random number generators' states in every checkpoint and restores them on ``--resume``.

    Proposal sampling and augmentation draw random numbers, so without this a resumed run diverges from the
    uninterrupted one. With it (and data loading in the main process, DATALOADER.NUM_WORKERS 0, since worker
    processes reseed themselves) a resumed run repeats the uninterrupted run's iterations exactly. detectron2's
    trainer stores ``state_dict()`` of every hook in its checkpoints.
    """

    def state_dict(self):
        # Tensors and plain Python values only: torch.load(weights_only=True), the default of current torch,
        # refuses numpy arrays in checkpoints.
        name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state):
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
