"""The WoodFisher paper's form of the block inverse, kept as the reference :class:`~.fisher.BlockFisher` is tested against.

:class:`ShermanMorrisonInverse` keeps ``F^-1`` directly from ``(1/lambda) I`` by one Sherman-Morrison rank-1
update per gradient, batched over all blocks. It needs the number of gradients ``m`` up front (the ``1/m``
is inside every update, as in the reference implementation, which fixes its number of Fisher samples)
and full ``B x B`` blocks; a training run knows neither the epoch length in general nor wants float32
rank-1 downdates accumulating rounding over hundreds of steps.
"""
from __future__ import annotations

import torch


class ShermanMorrisonInverse:
    """``F^-1`` maintained directly by Sherman-Morrison rank-1 updates, batched over all blocks.

    ``F = lambda I + (1/m) sum_j g_j g_j^T`` with ``m = num_samples`` fixed in advance: starting from
    ``(1/lambda) I``, each gradient ``g`` updates ``Finv -= (Finv g)(Finv g)^T / (m + g^T Finv g)``
    (the inverse of ``A + g g^T / m``). Full ``(n_blocks, B, B)`` storage. Reference implementation.
    """

    def __init__(self, n_blocks: int, block_size: int, dampening: float, num_samples: int, dtype=None, device=None):
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        self.num_samples = num_samples
        self.seen = 0
        eye = torch.eye(block_size, dtype=dtype or torch.get_default_dtype(), device=device) / dampening
        self.inverse = eye.expand(n_blocks, block_size, block_size).clone()

    @torch.no_grad()
    def update(self, g: torch.Tensor) -> None:
        """One gradient as ``(n_blocks, B)``."""
        v = torch.bmm(self.inverse, g.unsqueeze(-1)).squeeze(-1)  # Finv g (Finv symmetric)
        denom = self.num_samples + (g * v).sum(-1)
        self.inverse.sub_(v.unsqueeze(-1) * (v / denom.unsqueeze(-1)).unsqueeze(-2))
        self.seen += 1

    def diag(self) -> torch.Tensor:
        return self.inverse.diagonal(dim1=-2, dim2=-1)


def sherman_morrison_block_inverse(grads: torch.Tensor, dampening: float) -> torch.Tensor:
    """``(lambda I + (1/m) sum_j g_j g_j^T)^-1`` per block by Sherman-Morrison; ``grads`` is ``(m, n_blocks, B)``."""
    m, nb, B = grads.shape
    sm = ShermanMorrisonInverse(nb, B, dampening, m, dtype=grads.dtype, device=grads.device)
    for g in grads:
        sm.update(g)
    return sm.inverse
