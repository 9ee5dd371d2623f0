"""Streaming top-k: the exact best ``k`` of (score, id) pairs offered tile by tile, and the sampled
threshold that lets a tile hand over only its few candidates.

:class:`StreamingTopK` keeps the exact top ``k`` of (score, id) pairs offered tile by tile (ties: lower
id first) in memory ``O(k + tile)``, and :func:`sampled_threshold` estimates from a few thousand sampled
entries a score that the ``k``-th best of a layer very likely exceeds, so that a tile only hands over
its few candidates above it. The sample decides only how much work is done, never the result: when the
estimate turns out too high the layer is swept again for the candidates below it
(:func:`stream_layer_into`), so results are exact and independent of the tile size.

:func:`sampled_threshold` and :func:`stream_layer_into` take a layer's streamed dense gradient
(:class:`~redr.redistribution.signals.dense_gradient.LayerGradient`): its tiles with the active positions
marked, and single entries.
"""
from __future__ import annotations

import bisect
import math

import torch

#: Entries sampled per layer to estimate a growth threshold (costs ``SAMPLE_SIZE * N`` multiply-adds).
SAMPLE_SIZE = 16384

#: Sampling is used only when the layer has at least this many free positions per sample: a sampled
#: entry costs a gathered (memory-bound) dot product, a swept one a share of a BLAS matmul, so below
#: about a million positions the sample would cost as much as the candidates it saves.
MIN_FREE_PER_SAMPLE = 64


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


def sampled_threshold(lg, sel: StreamingTopK, keys: torch.Tensor,
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


def stream_layer_into(sel: StreamingTopK, lg, id_offset: int = 0) -> None:
    """Offer every inactive position of the layer (id ``id_offset + row * in + col``, score ``|dL/dW|``) to ``sel``.

    With a sampled threshold the tiles hand over only the candidates at or above it; if in the end
    fewer than ``sel.k`` held candidates reach it (the estimate was too high), the layer is swept again
    for the candidates below it, so the selection is always exact. Ends with the buffer cut back to
    ``k`` (which raises the bound for the next layer).
    """
    in_f = lg.in_features
    hint = sampled_threshold(lg, sel, lg.active_keys())
    # a tile of dead rows scores 0 everywhere: it can only matter while 0 can still be chosen
    zeros_lose = (lambda: True) if hint is not None and hint > 0 else (lambda: sel.bound > 0)
    for r0, tile in lg.tiles(skip_dead=zeros_lose):
        sel.offer(lg.inactive_scores(r0, tile), id_offset + r0 * in_f, lo=hint)
        del tile
    if hint is not None and sel.count_at_least(hint) < sel.k:
        lg.stats.resweeps += 1
        for r0, tile in lg.tiles(skip_dead=lambda: sel.bound > 0):
            sel.offer(lg.inactive_scores(r0, tile), id_offset + r0 * in_f, hi=hint)
            del tile
    sel.compact()
