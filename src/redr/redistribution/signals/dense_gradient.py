"""Dense gradients of sparse layers, computed only at redistribution time, one layer at a time, in row tiles.

Training never forms ``dL/dW`` of a sparse layer's full ``(out, in)`` weight matrix: the backward pass
computes the gradient of the active values only. Gradient-based growth (Redr-Gradient, -Global, -Loss)
needs the gradient at *inactive* positions too, so at redistribution time :func:`stream_layer_gradients`
runs one extra forward and backward pass and, while the backward passes each sparse layer, hands that
layer's input ``x`` (``N x in``) and output gradient ``g = dL/d(pre-activation)`` (``N x out``) to a
consumer as a :class:`LayerGradient`. The consumer asks it for dense gradient rows, ``g[:, rows].T @ x``,
a tile of at most ``tile_rows`` rows at a time, scores the tile, keeps what it needs and drops the tile.

Memory. The extra pass holds what a training step holds (activations; the layer's output gradient
while the backward is at that layer). The dense-gradient work holds one tile (``tile_rows *
in_features`` numbers) and same-sized temporaries at a time, sampled entries are computed in chunks of
the same size, and a layer's ``x`` and ``g`` are released as soon as its consumer returns: that part
depends neither on the size of a layer beyond ``tile_rows * in_features`` nor on the number of layers.
What does scale with the model is what the consumer keeps: for growth, its candidates, ``O(k)`` pairs
for ``k`` weights to grow (``k + max(k / 4, 65536)`` at most, 8 bytes each with float32 scores), i.e.
proportional to the plan itself. ``benchmarks/redistribution_cost.py`` measures it.

Details that matter:

* ``torch.autograd.grad`` drives the backward towards a private zero "anchor" that every sparse
  layer's output passes through (:class:`_Tap`, an identity in value); so the backward reaches every
  sparse layer and nothing is accumulated into any parameter's ``.grad``. The sparse layers' ``values``
  are switched to ``requires_grad=False`` for the pass (restored afterwards) so that the backward
  skips their (unused) sparse value gradient.
* The data are the context's batches concatenated into one batch. With a mean-reduced loss the
  gradient of the concatenated batch is the average of the per-batch gradients when the batches have
  equal sizes (their sum up to the constant factor ``1/number_of_batches``; every sample weighs the
  same when sizes differ), and a constant factor changes no ranking. The activations of all the
  batches are alive at once, so memory grows with the number of batches (not with the tile option).
* The model runs in its current mode (train mode at the end of an epoch). The pass leaves no trace:
  the global RNG (dropout) is forked and restored, and the buffers of non-sparse modules (e.g.
  BatchNorm running statistics) are restored afterwards.
* Every data-dependent number handed out (tiles, sampled entries, per-neuron errors) goes through the
  context's ``all_reduce`` first, so data-parallel ranks see the sum over ranks and choose the same
  topology. (That reduces the dense gradient tile by tile; gathering ``x`` and ``g`` would be cheaper
  but needs an all-gather the context does not offer.) Pass the unwrapped model, not a DDP wrapper.
* A sparse layer that the loss does not depend on gets a zero gradient; a layer called several times
  in one forward gets the sum over its calls (inputs and output gradients are concatenated).

Growth scores. Growth never picks a position that is active before the step: :meth:`LayerGradient.inactive_scores`
and :meth:`LayerGradient.inactive_rows` give ``|dL/dW|`` with the active positions marked ``-1`` (this module
reads the layer's CSR for that; the selection does not). :class:`GradientPass` holds the pass's two options
and checks them. The selection of the best scores is :mod:`redr.redistribution.selection.streaming_topk`.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch

from redr.redistribution.signals.conv_adapter import layer_input_rows, layer_output_rows
from redr.sparse.matrix import SparseMatrixModule
from redr.sparse.layout import key_dtype

#: Default rows per tile: 512 rows of a 4096-wide layer are 8 MiB of float32 (measured on 2 CPU cores:
#: 128-row tiles cost ~1.6x the time of 512-row tiles for a 4096x4096 layer, 1024 rows ~0.9x).
DEFAULT_TILE_ROWS = 512


@dataclass
class GradientStats:
    """Counters of one dense-gradient pass (go into the plan's ``info``, so into the history)."""

    samples: int = 0  # rows of the concatenated batch
    batches: int = 0  # batches used
    layers: int = 0  # layers handed to the consumer
    tiles: int = 0  # dense-gradient tiles computed
    skipped_tiles: int = 0  # tiles of dead rows only, left out because zeros could not be chosen
    dead_rows: int = 0  # rows (over all layers) whose output gradient is all zero: never multiplied
    max_tile_rows: int = 0
    max_work_elements: int = 0  # largest tile or sample chunk, in numbers
    sampled_entries: int = 0  # entries computed for thresholds
    resweeps: int = 0  # layers swept a second time because a sampled threshold was too high
    all_reduce_calls: int = 0
    seconds: float = 0.0  # forward + backward + everything the consumer did

    def to_dict(self) -> dict:
        return asdict(self)


class LayerGradient:
    """One sparse layer's share of the backward pass: its input and output gradient, and tiles of dL/dW.

    ``x``: ``(N, in)`` input of the layer; ``gT``: ``(out, N)`` gradient of the loss with respect to the
    layer's output (= pre-activation), transposed and contiguous. Nothing here is all-reduced yet;
    every method returns all-reduced results.
    """

    def __init__(self, index: int, layer: SparseMatrixModule, x: torch.Tensor, gT: torch.Tensor, tile_rows: int,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor], stats: GradientStats):
        self.index, self.layer, self.x, self.gT = index, layer, x, gT
        self.tile_rows, self._all_reduce, self.stats = tile_rows, all_reduce, stats
        self.out_features, self.in_features = layer.out_features, layer.in_features
        self._live = None
        self._keys = None

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        self.stats.all_reduce_calls += 1
        return self._all_reduce(t)

    def neuron_error(self) -> torch.Tensor:
        """``sum_n |dL/d pre-activation[n, i]|`` for every output neuron ``i`` (all-reduced), shape ``(out,)``."""
        return self.all_reduce(self.gT.abs().sum(1))

    def live_rows(self) -> torch.Tensor:
        """Bool ``(out,)``: rows whose output gradient is not all zero on some rank (a dead ReLU unit's row of
        ``dL/dW`` is exactly 0). All-reduced, so every rank skips the same work."""
        if self._live is None:
            live = self.all_reduce((self.gT != 0).any(1).to(self.gT.dtype)) > 0
            self._live = live
            self.stats.dead_rows += int(live.numel() - live.sum())
        return self._live

    def tile(self, rows) -> torch.Tensor:
        """Dense gradient rows ``dL/dW[rows, :]`` (all-reduced); ``rows`` a slice or an index tensor of at most
        ``tile_rows`` rows. A fresh tensor the caller may modify. For a slice, rows that are dead on every
        rank are not multiplied (their entries are exactly 0)."""
        g = self.gT[rows] if isinstance(rows, slice) else self.gT.index_select(0, rows)
        n = g.shape[0]
        if n > self.tile_rows:
            raise ValueError(f"a tile of {n} rows exceeds tile_rows={self.tile_rows}")
        live = self.live_rows()[rows] if isinstance(rows, slice) else None
        n_live = n if live is None else int(live.sum())
        if n_live == n:
            t = g @ self.x
        else:
            t = g.new_zeros(n, self.in_features)
            if n_live:
                idx = live.nonzero().squeeze(1)
                t[idx] = g.index_select(0, idx) @ self.x
        t = self.all_reduce(t)
        self.stats.tiles += 1
        self.stats.max_tile_rows = max(self.stats.max_tile_rows, n)
        self.stats.max_work_elements = max(self.stats.max_work_elements, t.numel())
        return t

    def tiles(self, skip_dead: Callable[[], bool] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first_row, tile)`` for consecutive row ranges covering the whole matrix. A range whose rows
        are all dead (all-zero tile) is left out when ``skip_dead()`` says zeros cannot matter."""
        for r0 in range(0, self.out_features, self.tile_rows):
            rows = slice(r0, min(r0 + self.tile_rows, self.out_features))
            if skip_dead is not None and not bool(self.live_rows()[rows].any()) and skip_dead():
                self.stats.skipped_tiles += 1
                continue
            yield r0, self.tile(rows)

    def active_keys(self) -> torch.Tensor:
        """The layer's active positions as sorted flat keys ``row * in_features + col`` (computed once)."""
        if self._keys is None:
            self._keys = self.layer.layout.keys(key_dtype(self.layer.layout.shape))
        return self._keys

    def free_inputs(self) -> torch.Tensor:
        """Inactive inputs of every output neuron, shape ``(out,)``: how many weights each row can still grow."""
        return self.in_features - self.layer.layout.row_counts()

    def inactive_scores(self, r0: int, tile: torch.Tensor) -> torch.Tensor:
        """``|tile|`` (the tile of rows ``r0 ..``) flattened, the layer's active positions set to ``-1`` (in place)."""
        keys, crow = self.active_keys(), self.layer.crow
        s = tile.abs_().view(-1)
        a, b = int(crow[r0]), int(crow[r0 + tile.shape[0]])
        if b > a:
            s[keys[a:b] - r0 * self.in_features] = -1
        return s

    def inactive_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``|dL/dW[rows, :]|`` for an index tensor of at most ``tile_rows`` rows, the active positions set to ``-1``."""
        scores = self.tile(rows).abs_()
        local, cols = _row_entries(self.layer.crow, self.layer.col, rows)
        scores[local, cols] = -1
        return scores

    def entries(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """``dL/dW[rows[j], cols[j]]`` for a list of positions (all-reduced), in chunks no larger than a tile."""
        n = self.x.shape[0]
        chunk = max(1, self.tile_rows * self.in_features // max(n, 1))
        xT = self.x.t()
        if not xT.is_contiguous():  # the first layer's input: gathering its columns would be strided
            xT = xT.contiguous()
        out = []
        for s in range(0, rows.numel(), chunk):
            r, c = rows[s:s + chunk], cols[s:s + chunk]
            out.append((self.gT.index_select(0, r) * xT.index_select(0, c)).sum(1))
            self.stats.max_work_elements = max(self.stats.max_work_elements, r.numel() * n)
        del xT
        vals = torch.cat(out) if out else self.gT.new_zeros(0)
        self.stats.sampled_entries += vals.numel()
        return self.all_reduce(vals)

    def entries_at_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """``dL/dW`` at sorted flat keys ``row * in + col`` (all-reduced): sampled growth's SDDMM. On the CPU in
        float32 the keys become a CSR pattern for the layer's own SDDMM kernel (one contiguous dot product per
        candidate, ``O(batch x candidates)``, nothing gathered); elsewhere :meth:`entries`."""
        from redr.sparse import kernels
        from redr.sparse.index_ops import csr_from_keys
        from redr.sparse.layout import index_dtype

        shape = (self.out_features, self.in_features)
        if not (kernels.HAVE_NUMBA and self.gT.device.type == "cpu" and self.gT.dtype == torch.float32
                and self.x.dtype == torch.float32):
            return self.entries(torch.div(keys, self.in_features, rounding_mode="floor"), keys % self.in_features)
        crow, col = csr_from_keys(keys.cpu(), shape, index_dtype(*shape, keys.numel()))
        vals = kernels.sddmm(crow, col, self.gT, self.x.t().contiguous(), shape, "numba")
        self.stats.sampled_entries += vals.numel()
        return self.all_reduce(vals)


def _row_entries(crow: torch.Tensor, col: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the row within ``rows``, column) of every active entry of the given rows."""
    starts = crow[rows].long()
    counts = crow[rows + 1].long() - starts
    local = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    entry = torch.repeat_interleave(starts, counts) + (torch.arange(local.numel(), device=rows.device) - first)
    return local, col[entry].long()


class _Tap(torch.autograd.Function):
    """Identity in value; in the backward it hands the output gradient to a callback and gives the anchor 0."""

    @staticmethod
    def forward(ctx, output, anchor, callback):
        ctx.callback = callback
        ctx.anchor_meta = (anchor.dtype, anchor.device)
        return output.clone()  # a clone, not a view: later in-place ops (ReLU(inplace=True)) stay legal

    @staticmethod
    def backward(ctx, grad):
        callback, ctx.callback = ctx.callback, None
        callback(grad)
        dtype, device = ctx.anchor_meta
        return grad, torch.zeros((), dtype=dtype, device=device), None


def concat_batches(batches: Sequence, num_batches: int | None, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The first ``num_batches`` (all when None) ``(x, y)`` batches concatenated along dim 0, on ``device``."""
    if not batches:
        raise ValueError("gradient-based redistribution needs at least one (x, y) batch in the context")
    use = list(batches) if num_batches is None else list(batches)[:num_batches]
    xs, ys = [], []
    for b in use:
        x, y = b[0], b[1]
        if not (torch.is_tensor(x) and torch.is_tensor(y)):
            raise TypeError("batches must be (x, y) pairs of tensors")
        xs.append(x.to(device))
        ys.append(y.to(device))
    if len(use) == 1:
        return xs[0], ys[0], 1
    return torch.cat(xs), torch.cat(ys), len(use)


@contextmanager
def _no_trace(model: torch.nn.Module, device: torch.device):
    """Fork the global RNG and restore non-sparse buffers (BatchNorm statistics) after the extra pass."""
    saved = {}
    for mname, module in model.named_modules():
        if isinstance(module, SparseMatrixModule):
            continue
        for bname, buf in module.named_buffers(recurse=False):
            if buf is not None:
                saved[(mname, bname)] = buf.detach().clone()
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for (mname, bname), value in saved.items():
                    getattr(model.get_submodule(mname), bname).copy_(value)


def stream_layer_gradients(ctx, consumer: Callable[[LayerGradient], None], num_batches: int | None = None,
                           tile_rows: int = DEFAULT_TILE_ROWS) -> GradientStats:
    """Run one forward and backward pass on the context's batches and call ``consumer(LayerGradient)`` once
    for every layer of ``ctx.layers``, while the backward passes it (so in reverse order for an MLP).

    Layers the loss does not reach are handed over after the backward with a zero gradient. Nothing is
    written to any parameter's ``.grad``; the model's buffers and the global RNG are left as they were.
    """
    check_gradient_options(tile_rows, num_batches)
    if ctx.loss_fn is None:
        raise ValueError("gradient-based redistribution needs loss_fn in the context")
    start = time.perf_counter()
    layers = list(ctx.layers)
    position = {id(layer): i for i, layer in enumerate(layers)}
    device = layers[0].values.device
    x, y, used = concat_batches(ctx.batches, num_batches, device)
    stats = GradientStats(samples=int(x.shape[0]), batches=used)
    calls = [0] * len(layers)
    pending: list[list] = [[] for _ in layers]
    done = [False] * len(layers)
    anchor = torch.zeros((), device=device, requires_grad=True)

    def finish(i: int) -> None:
        parts, pending[i] = pending[i], []
        done[i] = True
        layer = layers[i]
        if parts:
            xi = parts[0][0] if len(parts) == 1 else torch.cat([p[0] for p in parts])
            gi = parts[0][1] if len(parts) == 1 else torch.cat([p[1] for p in parts])
        else:
            xi = layer.values.new_zeros(1, layer.in_features)
            gi = layer.values.new_zeros(1, layer.out_features)
        del parts
        stats.layers += 1
        with torch.no_grad():
            consumer(LayerGradient(i, layer, xi, gi.t().contiguous(), tile_rows, ctx.all_reduce, stats))

    def forward_hook(module, args, output):
        i = position[id(module)]
        calls[i] += 1
        holder = {"x": layer_input_rows(module, args[0].detach())}

        def on_grad(g):
            pending[i].append((holder.pop("x"), layer_output_rows(module, g.detach())))
            if len(pending[i]) == calls[i]:
                finish(i)

        return _Tap.apply(output, anchor, on_grad)

    handles = [layer.register_forward_hook(forward_hook) for layer in layers]
    requires = [layer.values.requires_grad for layer in layers]
    try:
        for layer in layers:
            layer.values.requires_grad_(False)
        with _no_trace(ctx.model, device), torch.enable_grad():
            out = ctx.model(x)
            for h in handles:
                h.remove()
            loss = ctx.loss_fn(out, y)
            del out
            if loss.requires_grad:
                torch.autograd.grad(loss, anchor, allow_unused=True)
            del loss
    finally:
        for h in handles:
            h.remove()
        for layer, r in zip(layers, requires):
            layer.values.requires_grad_(r)
    for i in range(len(layers)):
        if not done[i]:
            finish(i)  # not reached by the loss (or only partly): zero / partial gradient
    stats.seconds = time.perf_counter() - start
    return stats


def check_gradient_options(tile_rows, num_batches) -> None:
    """``tile_rows`` bounds the extra memory per layer to about ``tile_rows * in_features`` numbers;
    ``num_batches`` caps how many of the context's batches are used (None: all that are given; the trainer
    gives ``--redistribution-batches``, default 1)."""
    if int(tile_rows) != tile_rows or tile_rows < 1:
        raise ValueError(f"tile_rows must be a positive integer, got {tile_rows!r}")
    if num_batches is not None and (int(num_batches) != num_batches or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")


class GradientPass:
    """The options of a dense-gradient pass (:func:`check_gradient_options`), checked when it is made."""

    def __init__(self, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None):
        check_gradient_options(tile_rows, num_batches)
        self.tile_rows = int(tile_rows)
        self.num_batches = None if num_batches is None else int(num_batches)

    def options(self) -> dict:
        return {"tile_rows": self.tile_rows, "num_batches": self.num_batches}

    def run(self, ctx, consumer: Callable[[LayerGradient], None]) -> GradientStats:
        """:func:`stream_layer_gradients` with these options."""
        return stream_layer_gradients(ctx, consumer, self.num_batches, self.tile_rows)
