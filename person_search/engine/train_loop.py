"""The training step: detectron2's SimpleTrainer with an autocast dtype switch and a resumable data stream."""
import time

import torch

from detectron2.engine import SimpleTrainer

from person_search.precision import amp_dtype

__all__ = ["MixedPrecisionTrainer", "amp_dtype_from_config"]


def amp_dtype_from_config(cfg):
    """``cfg.SOLVER.AMP_DTYPE`` ("" / "bf16" / "fp16") as a torch dtype, None for fp32.

    detectron2's own switch ``SOLVER.AMP.ENABLED`` (fp16 autocast with a GradScaler) means "fp16" when
    ``SOLVER.AMP_DTYPE`` is empty.
    """
    if cfg.SOLVER.AMP.ENABLED and not cfg.SOLVER.AMP_DTYPE:
        return torch.float16
    return amp_dtype(cfg.SOLVER.AMP_DTYPE, "SOLVER.AMP_DTYPE")


class MixedPrecisionTrainer(SimpleTrainer):
    """SimpleTrainer whose forward pass may run under ``torch.autocast(dtype)``.

    fp16 adds a GradScaler on the model's device type (CUDA or CPU); bf16 needs none. The identity losses keep
    their tables and logits in fp32. The data loader can be replaced (``set_data_loader``) before training starts, which resuming uses to continue
    the sample stream where the checkpoint left it.
    """

    def __init__(self, model, data_loader, optimizer, amp_dtype=None):
        # The batches are drawn from self._batches, created on first use, not from SimpleTrainer's iterator.
        super().__init__(model, (), optimizer)
        self.data_loader = data_loader
        self._batches = None
        self.amp_dtype = amp_dtype
        device_type = next(model.parameters()).device.type
        self._device_type = device_type
        # fp16's gradients underflow without loss scaling; the scaler is saved in checkpoints (state_dict)
        self.grad_scaler = torch.amp.GradScaler(device_type) if amp_dtype == torch.float16 else None

    def set_data_loader(self, data_loader):
        self.data_loader = data_loader
        self._batches = None

    def run_step(self):
        assert self.model.training, "MixedPrecisionTrainer: model was changed to eval mode!"
        start = time.perf_counter()
        # Loading keeps torch's global random stream untouched (a DataLoader draws a seed from it when its
        # iterator starts), so the model's random draws per iteration are the same in a resumed run.
        with torch.random.fork_rng(devices=[]):
            if self._batches is None:
                self._batches = iter(self.data_loader)
            data = next(self._batches)
        data_time = time.perf_counter() - start

        with torch.autocast(self._device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
