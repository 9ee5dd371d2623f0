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

The second half of this module is selection: :class:`StreamingTopK` keeps the exact top ``k`` of
(score, id) pairs offered tile by tile (ties: lower id first) in memory ``O(k + tile)``, and
:func:`sampled_threshold` estimates from a few thousand sampled entries a score that the ``k``-th best
of a layer very likely exceeds, so that a tile only hands over its few candidates above it. The sample
decides only how much work is done, never the result: when the estimate turns out too high the layer
is swept again for the candidates below it (:func:`stream_layer_into`), so results are exact and
independent of the tile size.
"""
from __future__ import annotations

import bisect
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch

from redr.sparse.layer import SparseLinear

#: Default rows per tile: 512 rows of a 4096-wide layer are 8 MiB of float32 (measured on 2 CPU cores:
#: 128-row tiles cost ~1.6x the time of 512-row tiles for a 4096x4096 layer, 1024 rows ~0.9x).
DEFAULT_TILE_ROWS = 512

#: Entries sampled per layer to estimate a growth threshold (costs ``SAMPLE_SIZE * N`` multiply-adds).
SAMPLE_SIZE = 16384

#: Sampling is used only when the layer has at least this many free positions per sample: a sampled
#: entry costs a gathered (memory-bound) dot product, a swept one a share of a BLAS matmul, so below
#: about a million positions the sample would cost as much as the candidates it saves.
MIN_FREE_PER_SAMPLE = 64


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

    def __init__(self, index: int, layer: SparseLinear, x: torch.Tensor, gT: torch.Tensor, tile_rows: int,
                 all_reduce: Callable[[torch.Tensor], torch.Tensor], stats: GradientStats):
        self.index, self.layer, self.x, self.gT = index, layer, x, gT
        self.tile_rows, self._all_reduce, self.stats = tile_rows, all_reduce, stats
        self.out_features, self.in_features = layer.out_features, layer.in_features
        self._live = None

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
        if isinstance(module, SparseLinear):
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
    if tile_rows < 1:
        raise ValueError(f"tile_rows must be >= 1, got {tile_rows}")
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
        holder = {"x": args[0].detach().reshape(-1, module.in_features)}

        def on_grad(g):
            pending[i].append((holder.pop("x"), g.detach().reshape(-1, module.out_features)))
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


# ---------------------------------------------------------------------------------------------- selection
def kth_largest(chunks: list[torch.Tensor], n: int, k: int, sample_size: int = 65536) -> torch.Tensor:
    """The ``k``-th largest of the ``n`` values in ``chunks`` (a 0-d tensor), exactly, without copying them all.

    An evenly strided sample brackets the answer between two sampled values (four standard
    deviations of the sample quantile either side); one counting pass checks the bracket and only
    the values inside it are gathered for an exact ``kthvalue``. If the bracket misses (or ``n`` is
    small) all values are concatenated instead.
    """
    if n > 4 * sample_size:
        step = max(1, n // sample_size)
        sample = torch.sort(torch.cat([c[::step] for c in chunks]), descending=True).values
        m = sample.numel()
        q = k / n
        margin = 4.0 * math.sqrt(q * (1.0 - q) * m) + 2.0
        hi = sample[max(0, int(q * m - margin))]
        lo = sample[min(m - 1, int(math.ceil(q * m + margin)))]
        above = sum(int((c > hi).sum()) for c in chunks)
        if above < k and bool(lo == hi):  # the bracket sits on one (tied) value
            if above + sum(int((c == hi).sum()) for c in chunks) >= k:
                return hi
        elif above < k:
            inside = [c[(c >= lo) & (c <= hi)] for c in chunks]
            inside = torch.cat(inside) if len(inside) > 1 else inside[0]
            need = k - above  # the need-th largest of the values inside the bracket
            if need <= inside.numel():
                return torch.kthvalue(inside, inside.numel() - need + 1).values
    s_all = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    return torch.kthvalue(s_all, n - k + 1).values


class StreamingTopK:
    """Exact top ``k`` of (score, id) pairs offered in pieces; among equal scores the lower id wins.

    Candidates below ``floor`` are never admitted (inactive positions score ``>= 0``, active ones are
    marked ``-1``). Once ``k`` candidates have been kept, ``bound`` is the ``k``-th best score: a new
    candidate is admitted only if it beats the worst kept one (a higher score, or the same score and a
    lower id). The buffer is cut back to ``k`` whenever it exceeds ``k + slack`` pairs (default slack
    ``max(k // 4, 65536)``; and by the callers after every layer), so it holds ``O(k + one offer)`` pairs.

    Each offer's ids are increasing (a tile's positions in row-major order) and the chunks are kept
    sorted by id, so ties are resolved by walking the chunks in order, without sorting ids. Ids are
    stored as int32 when ``id_limit`` (one more than the largest id) allows.
    """

    def __init__(self, k: int, id_limit: int | None = None, floor: float = 0.0, slack: int | None = None):
        self.k = max(0, int(k))
        self.bound = float(floor)
        self.tie_id = None  # while full: the id of the worst kept candidate (score == bound)
        self.limit = self.k + (max(self.k // 4, 65536) if slack is None else int(slack))
        self.id_dtype = torch.int32 if id_limit is not None and id_limit <= 2**31 - 1 else torch.int64
        self._scores: list[torch.Tensor] = []
        self._ids: list[torch.Tensor] = []
        self._ranges: list[tuple[int, int]] = []  # (first id, last id) of every chunk, chunks in id order
        self._overlap = False  # some chunks' id ranges interleave (after a second sweep of a layer)
        self._dirty = False  # offers since the last compaction
        self.size = 0
        self.admitted = 0
        self.compactions = 0

    def offer(self, scores: torch.Tensor, id_base: int, lo: float | None = None, hi: float | None = None) -> None:
        """Offer ``scores`` (1-D) with ids ``id_base + arange(n)``; only ``lo <= score < hi`` are considered."""
        if self.k == 0 or scores.numel() == 0:
            return
        if lo is not None and lo > self.bound:
            mask = scores >= lo
        else:
            mask = scores > self.bound
            cut = scores.numel() if self.tie_id is None else max(0, min(scores.numel(), self.tie_id - id_base))
            if cut:
                mask[:cut] |= scores[:cut] == self.bound
        if hi is not None:
            mask &= scores < hi
        idx = mask.nonzero().squeeze(1)
        del mask
        if idx.numel() == 0:
            return
        first, last = id_base + int(idx[0]), id_base + int(idx[-1])
        pos = bisect.bisect_left(self._ranges, (first, last))
        if (pos > 0 and self._ranges[pos - 1][1] >= first) or (pos < len(self._ranges) and self._ranges[pos][0] <= last):
            self._overlap = True
        self._ranges.insert(pos, (first, last))
        self._scores.insert(pos, scores[idx])
        self._ids.insert(pos, (idx + id_base).to(self.id_dtype))
        self.size += idx.numel()
        self.admitted += idx.numel()
        self._dirty = True
        if self.size > self.limit:
            self.compact()

    def _merge_chunks(self) -> None:
        """One chunk sorted by id (only needed after interleaving offers; rare)."""
        ids = torch.cat(self._ids)
        order = torch.argsort(ids)
        ids, scores = ids[order], torch.cat(self._scores)[order]
        self._ids, self._scores = [ids], [scores]
        self._ranges = [(int(ids[0]), int(ids[-1]))]
        self._overlap = False

    def compact(self) -> None:
        """Cut the buffer back to the best ``k`` and raise ``bound`` to the ``k``-th score.

        Find the ``k``-th score (:func:`kth_largest`), then chunk by chunk: keep the scores above it
        and, walking the chunks in id order, as many of the scores equal to it as are still needed.
        Needs a byte per held pair plus the kept pairs on top of the buffer, never a copy of it."""
        if self.size < self.k or self.k == 0 or (self.size == self.k and not self._dirty):
            return
        self._dirty = False
        if self._overlap:
            self._merge_chunks()
        self.compactions += 1
        v = kth_largest(self._scores, self.size, self.k)
        gts = [c > v for c in self._scores]
        need = self.k - sum(int(g.sum()) for g in gts)
        old_s, old_i, self._scores, self._ids = self._scores, self._ids, [], []
        scores, ids, ranges, tie_id = [], [], [], None
        gts.reverse()
        old_s.reverse()
        old_i.reverse()
        while old_s:  # pop in id order, so every old chunk is freed as soon as it is filtered
            s, i, gt = old_s.pop(), old_i.pop(), gts.pop()
            if need > 0:
                eq = s == v
                n_eq = int(eq.sum())
                if n_eq:
                    take = min(n_eq, need)
                    if take < n_eq:
                        eq &= torch.cumsum(eq, 0, dtype=torch.int32) <= take
                    tie_id = int(i[eq.nonzero()[-1]])
                    need -= take
                    gt |= eq
                del eq
            kept = int(gt.sum())
            if kept == s.numel():
                ks, ki = s, i
            elif kept:
                ks, ki = s[gt], i[gt]
            del s, i, gt
            if kept:
                scores.append(ks)
                ids.append(ki)
                ranges.append((int(ki[0]), int(ki[-1])))
                del ks, ki
        self._scores, self._ids, self._ranges = scores, ids, ranges
        self.size = self.k
        self.bound = float(v)
        self.tie_id = tie_id

    def count_at_least(self, t: float) -> int:
        return int(sum(int((s >= t).sum()) for s in self._scores))

    def sample(self, m: int) -> torch.Tensor:
        """About ``m`` of the held scores, evenly strided (deterministic)."""
        if not self._scores or m <= 0:
            return torch.empty(0)
        step = max(1, self.size // m)
        return torch.cat([s[::step] for s in self._scores])

    def result(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, scores)`` of the selected pairs, ascending by id, ids int32 when ``id_limit`` allows, else
        int64 (fewer than ``k`` only if fewer were offered)."""
        if self.size > self.k:
            self.compact()
        elif self._overlap:
            self._merge_chunks()
        if not self._scores:
            return torch.empty(0, dtype=self.id_dtype, device=device), torch.empty(0, device=device)
        return torch.cat(self._ids), torch.cat(self._scores)


def inactive_scores(tile: torch.Tensor, r0: int, keys: torch.Tensor, crow: torch.Tensor, in_features: int) -> torch.Tensor:
    """``|tile|`` flattened, with the layer's active positions in the tile's rows set to ``-1`` (in place)."""
    rows = tile.shape[0]
    s = tile.abs_().view(-1)
    a, b = int(crow[r0]), int(crow[r0 + rows])
    if b > a:
        s[keys[a:b] - r0 * in_features] = -1
    return s


def sampled_threshold(lg: LayerGradient, sel: StreamingTopK, keys: torch.Tensor,
                      sample_size: int | None = None) -> float | None:
    """A score ``t`` such that, very likely, at least ``sel.k`` candidates (held ones and this layer's
    inactive positions together) reach it; the layer's tiles then hand over only scores ``>= t``.

    From ``sample_size`` positions of the layer drawn uniformly (a fixed private seed: the same on every
    rank and in every run, no draw from the context's generator) the inactive ones are scored; with
    an evenly strided sample of the held candidates this estimates, for every ``t``, how many
    candidates reach it (``E``) and the standard deviation of that estimate (``s``); ``t`` is the
    largest sampled score with ``E - 4 s >= 1.05 k``. None when sampling does not pay off (a small
    layer) or finds no such score above the current bound.
    """
    sample_size = SAMPLE_SIZE if sample_size is None else sample_size
    out_f, in_f = lg.out_features, lg.in_features
    n_pos = out_f * in_f
    free = n_pos - keys.numel()
    k = sel.k
    if k <= 0 or free < MIN_FREE_PER_SAMPLE * sample_size or free + sel.size <= 1.05 * k:
        return None
    gen = torch.Generator().manual_seed(0x5EED + lg.index)
    draw = torch.randint(0, n_pos, (sample_size,), generator=gen).to(device=keys.device, dtype=keys.dtype)
    if keys.numel():
        hit = torch.searchsorted(keys, draw).clamp(max=keys.numel() - 1)
        draw = draw[keys[hit] != draw]
    m = draw.numel()
    if m < max(16, sample_size // 4):
        return None
    vals = lg.entries(draw // in_f, draw % in_f).abs().double()
    held = sel.sample(sample_size).to(vals.device).double()
    mb = held.numel()
    values = torch.cat([vals, held])
    from_layer = torch.cat([torch.ones(m, dtype=torch.float64, device=vals.device),
                            torch.zeros(mb, dtype=torch.float64, device=vals.device)])
    order = torch.argsort(values, descending=True, stable=True)
    values, from_layer = values[order], from_layer[order]
    f_l = torch.cumsum(from_layer, 0) / m
    var = free * free * f_l * (1 - f_l) / m
    est = free * f_l
    if mb:
        f_b = torch.cumsum(1 - from_layer, 0) / mb
        est = est + sel.size * f_b
        var = var + sel.size * sel.size * f_b * (1 - f_b) / mb
    ok = (est - 4.0 * var.sqrt()) >= 1.05 * k
    if not bool(ok.any()):
        return None
    t = float(values[int(ok.nonzero()[0])])
    return t if t > max(sel.bound, 0.0) else None


def stream_layer_into(sel: StreamingTopK, lg: LayerGradient, keys: torch.Tensor, id_offset: int = 0) -> None:
    """Offer every inactive position of the layer (id ``id_offset + row * in + col``, score ``|dL/dW|``) to ``sel``.

    With a sampled threshold the tiles hand over only the candidates at or above it; if in the end
    fewer than ``sel.k`` held candidates reach it (the estimate was too high), the layer is swept again
    for the candidates below it, so the selection is always exact. Ends with the buffer cut back to
    ``k`` (which raises the bound for the next layer).
    """
    layer, in_f = lg.layer, lg.in_features
    crow = layer.crow
    hint = sampled_threshold(lg, sel, keys)
    # a tile of dead rows scores 0 everywhere: it can only matter while 0 can still be chosen
    zeros_lose = (lambda: True) if hint is not None and hint > 0 else (lambda: sel.bound > 0)
    for r0, tile in lg.tiles(skip_dead=zeros_lose):
        sel.offer(inactive_scores(tile, r0, keys, crow, in_f), id_offset + r0 * in_f, lo=hint)
        del tile
    if hint is not None and sel.count_at_least(hint) < sel.k:
        lg.stats.resweeps += 1
        for r0, tile in lg.tiles(skip_dead=lambda: sel.bound > 0):
            sel.offer(inactive_scores(tile, r0, keys, crow, in_f), id_offset + r0 * in_f, hi=hint)
            del tile
    sel.compact()
