"""The identity branch's embedding: pooled ROI feature -> linear -> (BatchNorm) -> L2 normalisation."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IdentityEmbeddingHead"]


class IdentityEmbeddingHead(nn.Module):
    """Projects ROI features to L2-normalised identity embeddings.

    Accepts (N, C, H, W) feature maps (average-pooled, as the C4 head's res5 output) or (N, C) vectors
    (an FPN box head's output).
    """

    def __init__(self, in_channels, embed_dim, norm="BN"):
        super().__init__()
        self.projection = nn.Linear(in_channels, embed_dim)
        nn.init.normal_(self.projection.weight, std=0.01)
        nn.init.zeros_(self.projection.bias)
        if norm == "BN":
            self.norm = nn.BatchNorm1d(embed_dim)
        elif norm == "":
            self.norm = None
        else:
            raise ValueError(f"MODEL.REID.EMBED_NORM must be 'BN' or '', got {norm!r}")
        self.embed_dim = embed_dim

    def forward(self, x):
        # Float32 even under autocast: the BatchNorm subtracts a running mean that can be many times the spread
        # around it (15x for a random-init R50), and a bf16-rounded projection loses those digits of the
        # difference (R50-C4 with such statistics, bf16 vs fp32 min cosine 0.961 -> 0.978; the rest comes from
        # res5's bf16 output). The layer is small; the cost is negligible.
        with torch.autocast(x.device.type, enabled=False):
            # the spatial mean accumulates into fp32 without an fp32 copy of the (N, C, H, W) maps
            x = x.mean(dim=(2, 3), dtype=torch.float32) if x.dim() == 4 else x.float()
            x = self.projection(x.flatten(1))
            if self.norm is not None:
                use_batch_stats = self.training and x.shape[0] > 1
                x = F.batch_norm(
                    x,
                    self.norm.running_mean,
                    self.norm.running_var,
                    self.norm.weight,
                    self.norm.bias,
                    training=use_batch_stats,
                    momentum=self.norm.momentum,
                    eps=self.norm.eps,
                )
            return F.normalize(x, dim=1)
