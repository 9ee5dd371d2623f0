"""The quadratic model's statistics for removal (WoodFisher / WoodTaylor), from the block inverse ``F^-1``.

With ``d_q = [F^-1]_qq`` and ``a = F^-1 g`` (a damped Newton step; 0 for WoodFisher, which assumes a zero
gradient): ``rho_q = (w_q - a_q)^2 / (2 d_q)`` is the loss increase of removing weight ``q`` and moving
the others optimally, and the kept weights move by ``dw = -a - sum_{q removed} ((w_q - a_q) / d_q) F^-1 e_q``
(derivation in docs/algorithms-woodfisher.md). Each removed weight's update is computed as if it were
removed alone and the updates are summed: interactions between weights removed together in one block are
ignored, as in the WoodFisher reference implementation.
"""
from __future__ import annotations

import torch

from redr.redistribution.signals.fisher import BlockInverse


def removal_statistics(w: torch.Tensor, inv: BlockInverse, newton: torch.Tensor | None = None):
    """``(z, d, rho)`` per block slot: ``z = w - a`` (``a = F^-1 g``, or 0), ``d = [F^-1]_qq``,
    ``rho = z^2 / (2 d)``. All ``(n_blocks, B)``; ``z`` is ``w`` itself when ``newton`` is None."""
    d = inv.diag().to(w.dtype)
    z = w - newton if newton is not None else w
    return z, d, z.square().div_(d).mul_(0.5)


def optimal_update(inv: BlockInverse, z: torch.Tensor, d: torch.Tensor, removed: torch.Tensor,
                   newton: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``dw = -a - F^-1 c`` with ``c_q = z_q / d_q`` at removed slots (``removed``: bool ``(n_blocks, B)``).

    ``out`` (not ``z`` nor ``d``) may receive ``c`` and then the result, to save a temporary."""
    c = torch.div(z, d, out=out) if out is not None else z / d
    c.mul_(removed)
    dw = inv.matvec(c, out=torch.empty_like(c) if out is None else d.new_empty(d.shape))
    dw.neg_()
    if newton is not None:
        dw -= newton
    return dw

