"""Block-diagonal empirical Fisher over the active weights, and its inverse (for Redr-Woodfisher/-Woodtaylor).

Layout. The active weights of every layer are cut into blocks of ``B`` (:mod:`.fisher_blocks`).

Fisher. For every block ``F = lambda * I + (1/m) sum_j g_j g_j^T`` over the ``m`` minibatch gradients
``g_j`` seen since the last reset (the gradients training computes anyway; no extra passes). A padded
slot has gradient 0 in every ``g_j``, so its row and column of ``F`` are ``lambda * e``: the padding is
an identity block that couples to nothing, and its ``F^-1`` entries are ``1/lambda`` on the diagonal only.

How ``F^-1`` is obtained. Two exactly equivalent methods (equal in exact arithmetic; the tests check both
against ``torch.linalg.inv`` of the explicit damped Fisher in float64):

* :class:`BlockFisher` (used by the algorithms): keeps ``S = sum_j g_j g_j^T`` as the upper triangle of
  each symmetric block (``B (B+1) / 2`` numbers per block instead of ``B^2``). Gradients wait in a small
  buffer of ``buffer_steps`` rows and enter ``S`` as one batched rank-``r`` update (``bmm`` of the
  ``(r, B)`` gradient slices of all blocks), chunk by chunk so that temporaries stay small. At
  redistribution time the blocks are inverted once, chunk by chunk, with a batched Cholesky in float64;
  ``F^-1`` overwrites ``S`` in place (no second copy). Per step this costs one strided copy of the
  gradient plus ``1/r`` of a batched product; the count ``m`` need not be known in advance.
* :class:`~.sherman_morrison.ShermanMorrisonInverse`: the WoodFisher paper's form, ``F^-1`` kept directly
  by Sherman-Morrison rank-1 updates; kept as the reference the fast method is tested against.

Data parallel. :meth:`BlockFisher.add` is rank-local: it reads the ``.grad`` that DDP has already
averaged over ranks, so every rank accumulates the same ``S``. :meth:`BlockFisher.inverse` applies the
context's ``all_reduce`` (a sum across ranks) to ``S``, to the gradient sum and to the count ``m``
before inverting, so ``F = lambda I + (sum over ranks of S) / (sum over ranks of m)``: with averaged
gradients this changes nothing (every rank still decides the same), and without gradient averaging it is
the Fisher of all ranks' gradients together.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from redr.redistribution.signals.fisher_blocks import BlockLayout, TrianglePacking

#: Weights per Fisher block: the paper's, for both algorithms and both datasets.
DEFAULT_BLOCK_SIZE = 34

#: Default dampening ``lambda`` (Redr-Woodfisher's). The WoodFisher reference implementation defaults to 1e-3
#: for a Fisher of per-sample gradients; ours averages outer products of minibatch-mean gradients, whose noise
#: part is ~1/batch as large (batch 512 here), so the reference's setting corresponds to ~2e-6. Measured on
#: Fashion-MNIST (docs/algorithms-woodfisher.md): the induced loss falls steadily from 1e-1 to 1e-8; 1e-6
#: puts it 3-12x below magnitude removal's at every step of the sweeps, 1e-3 only 1.2-2.8x.
DEFAULT_DAMPENING = 1e-6


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@contextmanager
def single_threaded(device):
    """Run the enclosed CPU work with one intra-op thread (restored afterwards; no-op on other devices).

    The Fisher's work is thousands of tiny independent problems (``B x B`` products and factorisations):
    torch parallelises each batched call over its blocks and MKL/LAPACK may thread each ``B x B`` call, and on
    a busy machine the OpenMP threads spin at every barrier while the other thread is descheduled. Measured
    on the 2-core CPU under load: the per-step update took 102 ms of CPU with 2 threads and 10 ms with 1, the
    inversion of 59k blocks 32 s and 2.6 s (benchmarks/woodfisher_cost.py; docs/algorithms-woodfisher.md).
    ``torch.set_num_threads`` is process-wide: another Python thread using torch at the same moment runs
    single-threaded too for that long."""
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def damped_inverse(blocks: torch.Tensor, dampening: float) -> torch.Tensor:
    """``(lambda I + blocks)^-1`` for a batch of symmetric PSD blocks, via Cholesky (float64 inside).

    Blocks whose Cholesky fails (only possible for a tiny ``lambda`` against rounding) fall back to
    ``torch.linalg.inv``."""
    work = blocks.to(torch.float64, copy=True)
    work.diagonal(dim1=-2, dim2=-1).add_(dampening)
    chol, info = torch.linalg.cholesky_ex(work)
    inv = torch.cholesky_inverse(chol)
    bad = info != 0
    if bool(bad.any()):
        inv[bad] = torch.linalg.inv(work[bad])
    return inv


class BlockInverse:
    """``F^-1`` of every block (packed upper triangles), with the mean gradient when tracked."""

    def __init__(self, layout: BlockLayout, packed_inverse: torch.Tensor, mean_grad: torch.Tensor | None,
                 count: int, dampening: float, chunk_blocks: int):
        self.layout = layout
        self.packed = packed_inverse
        self.mean_grad = mean_grad
        self.count = count
        self.dampening = dampening
        self.chunk_blocks = chunk_blocks
        self._pk = TrianglePacking.get(layout.block_size, packed_inverse.device)

    def diag(self) -> torch.Tensor:
        """``[F^-1]_qq`` as ``(n_blocks, B)``."""
        return self.packed[:, self._pk.diag]

    def matvec(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``F^-1 v`` block by block, ``v`` shaped ``(n_blocks, B)`` (``out`` may be given, not ``v``)."""
        if out is None:
            out = torch.empty_like(v)
        with single_threaded(v.device):
            for c in range(0, self.layout.n_blocks, self.chunk_blocks):
                full = self._pk.unpack(self.packed[c:c + self.chunk_blocks], dtype=v.dtype)
                out[c:c + self.chunk_blocks] = torch.bmm(full, v[c:c + self.chunk_blocks].unsqueeze(-1)).squeeze(-1)
        return out

    def dense(self) -> torch.Tensor:
        """All blocks as ``(n_blocks, B, B)`` (tests and small models only)."""
        return self._pk.unpack(self.packed)


class BlockFisher:
    """Accumulates the block-wise empirical Fisher of the active weights; see the module docstring.

    Args:
        block_size: ``B``, weights per block.
        dampening: ``lambda`` added to the diagonal.
        buffer_steps: gradients kept before one batched rank-``r`` update of ``S`` (memory
            ``r * nnz`` numbers; time per step falls with ``r``).
        chunk_blocks: blocks processed at once by updates and inversion (bounds temporaries).
        track_mean: also keep the sum of the gradients (Woodtaylor needs their mean).
    """

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, dampening: float = DEFAULT_DAMPENING, buffer_steps: int = 8,
                 chunk_blocks: int = 1024, track_mean: bool = False):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if not dampening > 0:
            raise ValueError(f"dampening must be > 0 (it keeps F invertible), got {dampening}")
        if buffer_steps < 1 or chunk_blocks < 1:
            raise ValueError("buffer_steps and chunk_blocks must be >= 1")
        self.block_size = int(block_size)
        self.dampening = float(dampening)
        self.buffer_steps = int(buffer_steps)
        self.chunk_blocks = int(chunk_blocks)
        self.track_mean = track_mean
        self.layout: BlockLayout | None = None
        self.count = 0
        self._fill = 0
        self._S: torch.Tensor | None = None        # (n_blocks, P) packed sum of outer products
        self._buffer: torch.Tensor | None = None   # (n_blocks, r, B) waiting gradients
        self._grad_sum: torch.Tensor | None = None  # (n_blocks, B)
        self._dtype = None
        self._device = None

    # ------------------------------------------------------------------ state
    def reset(self, nnz: Sequence[int], dtype=None, device=None) -> None:
        """Forget all statistics; the next gradients are for a topology with these per-layer nnz."""
        self.layout = BlockLayout(self.block_size, tuple(int(n) for n in nnz))
        self.count = 0
        self._fill = 0
        self._S = self._buffer = self._grad_sum = None
        self._dtype = dtype or torch.get_default_dtype()
        self._device = torch.device(device) if device is not None else torch.device("cpu")

    def matches(self, nnz: Sequence[int]) -> bool:
        return self.layout is not None and self.layout.nnz == tuple(int(n) for n in nnz)

    def ensure_layout(self, nnz: Sequence[int], dtype=None, device=None) -> None:
        """:meth:`reset` unless the statistics are already for these per-layer nnz."""
        if not self.matches(nnz):
            self.reset(nnz, dtype=dtype, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held now (statistics and buffer)."""
        return sum(t.numel() * t.element_size() for t in (self._S, self._buffer, self._grad_sum) if t is not None)

    def _allocate(self, buffer: bool = True) -> None:
        pk = TrianglePacking.get(self.block_size, self._device)
        nb = self.layout.n_blocks
        if self._S is None:
            self._S = torch.zeros(nb, pk.size, dtype=self._dtype, device=self._device)
        if buffer and self._buffer is None:
            self._buffer = torch.zeros(nb, self.buffer_steps, self.block_size, dtype=self._dtype, device=self._device)
        if self.track_mean and self._grad_sum is None:
            self._grad_sum = torch.zeros(nb, self.block_size, dtype=self._dtype, device=self._device)

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def add(self, grads: Sequence[torch.Tensor | None]) -> None:
        """One minibatch gradient, as per-layer 1-D tensors in ``values`` order (``None``: all zero)."""
        if self.layout is None:
            raise RuntimeError("BlockFisher.reset(nnz) must be called before add()")
        self._allocate()
        with single_threaded(self._device):
            row = self._buffer[:, self._fill, :]
            self.layout.write_rows(row, grads)
            if self._grad_sum is not None:
                self._grad_sum += row
            self._fill += 1
            self.count += 1
            if self._fill == self.buffer_steps:
                self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        """Fold the buffered gradients into ``S`` (one batched rank-``r`` update, chunk by chunk)."""
        if not self._fill:
            return
        pk = TrianglePacking.get(self.block_size, self._device)
        r = self._fill
        with single_threaded(self._device):
            for c in range(0, self.layout.n_blocks, self.chunk_blocks):
                g = self._buffer[c:c + self.chunk_blocks, :r, :]          # (nc, r, B)
                outer = torch.bmm(g.transpose(1, 2), g)                    # (nc, B, B) = sum_j g_j g_j^T
                self._S[c:c + self.chunk_blocks].add_(torch.index_select(outer.view(outer.shape[0], -1), 1, pk.upper))
        self._fill = 0

    # ------------------------------------------------------------------ results
    def explicit_fisher(self) -> torch.Tensor:
        """The damped Fisher ``lambda I + S / m`` of every block, ``(n_blocks, B, B)`` (tests, small models)."""
        self.flush()
        self._allocate(buffer=False)
        pk = TrianglePacking.get(self.block_size, self._device)
        full = pk.unpack(self._S) / max(self.count, 1)
        full.diagonal(dim1=-2, dim2=-1).add_(self.dampening)
        return full

    def mean_gradient(self) -> torch.Tensor | None:
        if self._grad_sum is None:
            return None
        return self._grad_sum / max(self.count, 1)

    @torch.no_grad()
    def inverse(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] = _identity) -> BlockInverse:
        """Invert every block of ``lambda I + S/m`` (after summing the statistics across ranks).

        This *consumes* the statistics: ``F^-1`` is written over ``S`` and handed to the returned
        :class:`BlockInverse`; the Fisher is empty afterwards until :meth:`reset` (the topology changes at
        every redistribution anyway). With no gradient seen, ``F = lambda I``."""
        if self.layout is None:
            raise RuntimeError("BlockFisher.reset(nnz) must be called before inverse()")
        self.flush()
        self._buffer = None  # free the gradient buffer before the inversion temporaries
        self._allocate(buffer=False)
        reduce = all_reduce is not _identity
        count = self.count
        if reduce:
            count = int(round(float(all_reduce(torch.tensor([float(count)], dtype=torch.float64,
                                                             device=self._device)).item())))
        m = max(count, 1)
        pk = TrianglePacking.get(self.block_size, self._device)
        S = self._S
        for c in range(0, self.layout.n_blocks, self.chunk_blocks):
            chunk = S[c:c + self.chunk_blocks]
            if reduce:
                summed = all_reduce(chunk)
                if summed is not chunk:
                    chunk.copy_(summed)
            with single_threaded(self._device):
                full = pk.unpack(chunk, dtype=torch.float64).div_(m)
                pk.pack(damped_inverse(full, self.dampening), chunk)
        mean = None
        if self._grad_sum is not None:
            gsum = self._grad_sum
            if reduce:
                summed = all_reduce(gsum)
                if summed is not gsum:
                    gsum.copy_(summed)
            mean = gsum.div_(m)
        inv = BlockInverse(self.layout, S, mean, count, self.dampening, self.chunk_blocks)
        self._S = self._grad_sum = None
        self.count = 0
        return inv

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything for an exact resume: statistics, the buffered (not yet folded) gradients, counts."""
        return {
            "block_size": self.block_size, "dampening": self.dampening, "buffer_steps": self.buffer_steps,
            "nnz": list(self.layout.nnz) if self.layout is not None else None,
            "count": self.count, "fill": self._fill,
            "S": self._S, "grad_sum": self._grad_sum,
            "buffer": self._buffer[:, :self._fill].clone() if self._buffer is not None and self._fill else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["block_size"] != self.block_size:
            raise ValueError(f"checkpoint Fisher has block size {state['block_size']}, this one {self.block_size}")
        if state["nnz"] is None:
            self.layout = None
            self.count = self._fill = 0
            self._S = self._buffer = self._grad_sum = None
            return
        ref = next((t for t in (state["S"], state["grad_sum"], state["buffer"]) if t is not None), None)
        self.reset(state["nnz"], dtype=ref.dtype if ref is not None else None,
                   device=ref.device if ref is not None else None)
        self.count = int(state["count"])
        self._S = state["S"].clone() if state["S"] is not None else None
        self._grad_sum = state["grad_sum"].clone() if state["grad_sum"] is not None else None
        fill = int(state["fill"])
        if fill:
            if fill > self.buffer_steps:  # a checkpoint from a run with a larger buffer: fold it now
                saved, self.buffer_steps = self.buffer_steps, fill
                self._allocate()
                self._buffer[:, :fill] = state["buffer"]
                self._fill = fill
                self.flush()
                self._buffer, self.buffer_steps = None, saved
            else:
                self._allocate()
                self._buffer[:, :fill] = state["buffer"]
                self._fill = fill
