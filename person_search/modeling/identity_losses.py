"""Identity losses: OIM (Online Instance Matching) and a softmax classifier baseline.

Both share one interface, ``loss = module(features, pids)``: ``features`` (N, D) are L2-normalised embeddings,
``pids`` (N,) int64 identity indices, ``>= 0`` labeled, ``-1`` unlabeled. Swappable through
``IDENTITY_LOSS_REGISTRY`` and ``cfg.MODEL.REID.LOSS``.
"""
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.utils import comm
from detectron2.utils.registry import Registry

__all__ = ["IDENTITY_LOSS_REGISTRY", "build_identity_loss", "OIMLoss", "SoftmaxIdentityLoss"]

IDENTITY_LOSS_REGISTRY = Registry("IDENTITY_LOSS")
IDENTITY_LOSS_REGISTRY.__doc__ = """
Identity losses: ``module(features (N, D), pids (N,)) -> scalar``, pid -1 = unlabeled.
Registered classes are built with ``cls(cfg)`` (``@configurable``).
"""

# cfg.MODEL.REID.LOSS accepts these short names besides registered class names.
_SHORT_NAMES = {"OIM": "OIMLoss", "Softmax": "SoftmaxIdentityLoss"}


def build_identity_loss(cfg):
    """Build the identity loss named by ``cfg.MODEL.REID.LOSS`` ("OIM", "Softmax" or a registered class name)."""
    name = cfg.MODEL.REID.LOSS
    return IDENTITY_LOSS_REGISTRY.get(_SHORT_NAMES.get(name, name))(cfg)


def _check_inputs(features, pids, num_labeled, loss_name):
    if features.dim() != 2 or pids.shape != features.shape[:1]:
        raise ValueError(
            f"{loss_name}: expected features (N, D) and pids (N,), got {tuple(features.shape)} and {tuple(pids.shape)}"
        )
    if pids.numel() and (pids.max() >= num_labeled or pids.min() < -1):
        raise ValueError(
            f"{loss_name}: pids must be -1 (unlabeled) or in [0, {num_labeled}), got values in "
            f"[{int(pids.min())}, {int(pids.max())}]; check MODEL.REID.OIM.NUM_LABELED / SOFTMAX.NUM_CLASSES "
            f"against the training set's number of labeled identities"
        )


def _zero_loss(features):
    # Keeps the graph connected (DDP needs every parameter to receive a gradient) without producing NaN.
    return features.sum() * 0.0


def _gather_from_all_ranks(features, pids):
    """Concatenate (features, pids) of every rank in rank order, so every rank applies the same table update."""
    if comm.get_world_size() == 1:
        return features, pids
    gathered = comm.all_gather((features.cpu(), pids.cpu()))
    all_features = torch.cat([f for f, _ in gathered]).to(features.device)
    all_pids = torch.cat([p for _, p in gathered]).to(pids.device)
    return all_features, all_pids


@IDENTITY_LOSS_REGISTRY.register()
class OIMLoss(nn.Module):
    """Online Instance Matching loss (Xiao et al., CVPR 2017).

    logits = scalar * [features @ lut.T, features @ queue.T]; cross-entropy over the labeled identities only
    (queue columns act as extra negatives). After the loss is computed, each labeled feature updates its lookup
    table row (``row <- momentum * row + (1 - momentum) * feature``, re-normalised) and unlabeled features are
    written into the circular queue. The tables are buffers: no gradient flows into them, they are saved in
    checkpoints, and under distributed training every rank applies the update with the features of all ranks.
    """

    @configurable
    def __init__(self, *, embed_dim, num_labeled, queue_size, momentum=0.5, scalar=10.0):
        super().__init__()
        if embed_dim <= 0 or num_labeled <= 0 or queue_size < 0 or not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"OIMLoss: need embed_dim > 0, num_labeled > 0, queue_size >= 0, 0 <= momentum <= 1; "
                f"got {embed_dim}, {num_labeled}, {queue_size}, {momentum}"
            )
        self.embed_dim = embed_dim
        self.num_labeled = num_labeled
        self.queue_size = queue_size
        self.momentum = momentum
        self.scalar = scalar
        self.register_buffer("lut", torch.zeros(num_labeled, embed_dim))
        self.register_buffer("queue", torch.zeros(queue_size, embed_dim))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg):
        return {
            "embed_dim": cfg.MODEL.REID.EMBED_DIM,
            "num_labeled": cfg.MODEL.REID.OIM.NUM_LABELED,
            "queue_size": cfg.MODEL.REID.OIM.QUEUE_SIZE,
            "momentum": cfg.MODEL.REID.OIM.MOMENTUM,
            "scalar": cfg.MODEL.REID.OIM.SCALAR,
        }

    def extra_repr(self):
        return (
            f"embed_dim={self.embed_dim}, num_labeled={self.num_labeled}, queue_size={self.queue_size}, "
            f"momentum={self.momentum}, scalar={self.scalar}"
        )

    def logits(self, features):
        """(N, num_labeled + queue_size) scaled similarities to the lookup table, then the queue."""
        # torch.cat makes a copy, so the in-place table update below does not touch tensors saved for backward.
        table = torch.cat([self.lut, self.queue])
        return self.scalar * features @ table.t()

    def forward(self, features, pids):
        _check_inputs(features, pids, self.num_labeled, "OIMLoss")
        features = features.float()
        labeled = pids >= 0
        if labeled.any():
            # fp32 even under autocast: the tables hold unit vectors whose scaled dot products need the precision
            with torch.autocast(features.device.type, enabled=False):
                loss = F.cross_entropy(self.logits(features[labeled]), pids[labeled])
        else:
            loss = _zero_loss(features)
        if self.training:
            self._update_tables(*_gather_from_all_ranks(features.detach(), pids))
        return loss

    @torch.no_grad()
    def _update_tables(self, features, pids):
        self._update_lut(features[pids >= 0], pids[pids >= 0])
        if self.queue_size > 0:
            self._enqueue(features[pids == -1])

    def _update_lut(self, features, pids):
        # Equal to applying the momentum update once per sample in batch order: each round updates the first
        # remaining occurrence of every identity, so repeated identities are updated sequentially.
        remaining = torch.ones_like(pids, dtype=torch.bool)
        while remaining.any():
            index = remaining.nonzero().squeeze(1)
            is_first = torch.ones_like(index, dtype=torch.bool)
            sorted_pids, order = torch.sort(pids[index], stable=True)
            is_first[order[1:]] = sorted_pids[1:] != sorted_pids[:-1]
            index = index[is_first]
            rows = self.momentum * self.lut[pids[index]] + (1.0 - self.momentum) * features[index]
            self.lut[pids[index]] = F.normalize(rows, dim=1)
            remaining[index] = False

    def _enqueue(self, features):
        n = features.shape[0]
        if n == 0:
            return
        slots = (self.queue_ptr + torch.arange(n, device=features.device)) % self.queue_size
        # With more features than slots only the newest queue_size survive, in the slots they would end up in.
        self.queue[slots[-self.queue_size :]] = features[-self.queue_size :]
        self.queue_ptr.copy_((self.queue_ptr + n) % self.queue_size)


@IDENTITY_LOSS_REGISTRY.register()
class SoftmaxIdentityLoss(nn.Module):
    """Softmax baseline: a linear classifier over the labeled identities; unlabeled persons are ignored."""

    @configurable
    def __init__(self, *, embed_dim, num_classes):
        super().__init__()
        if embed_dim <= 0 or num_classes <= 0:
            raise ValueError(
                f"SoftmaxIdentityLoss: need embed_dim > 0 and num_classes > 0, got {embed_dim}, {num_classes}"
            )
        self.embed_dim = embed_dim
        self.num_classes = num_classes
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @classmethod
    def from_config(cls, cfg):
        return {"embed_dim": cfg.MODEL.REID.EMBED_DIM, "num_classes": cfg.MODEL.REID.SOFTMAX.NUM_CLASSES}

    def forward(self, features, pids):
        _check_inputs(features, pids, self.num_classes, "SoftmaxIdentityLoss")
        labeled = pids >= 0
        if not labeled.any():
            return _zero_loss(self.classifier(features))
        with torch.autocast(features.device.type, enabled=False):
            return F.cross_entropy(self.classifier(features[labeled].float()), pids[labeled])
