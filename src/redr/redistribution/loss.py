"""Redr-Loss (section 2.4, after Ertl): grow at the neurons with the largest backpropagated error.

Per layer: remove ``R = floor(alpha * nnz)`` weights by magnitude. Rank the layer's output neurons by
their error ``e_i = sum_n |dL/d pre-activation[n, i]|`` over the batch (ties: lower neuron index first)
and select the top ``neuron_fraction`` of them (``round(fraction * out_features)``, at least one).
Only the selected neurons' rows of the dense gradient ``dL/dW`` are computed (``tile_rows`` rows at a
time). Each selected neuron gets an equal share of ``R`` and grows it at its largest ``|dL/dW|`` inactive
inputs (ties: lower input index); new weights start at 0.

Shares ("water filling"): every selected neuron gets ``min(free_i, q)`` or ``q + 1`` new weights, where
``free_i`` is the number of its inputs not active before the step and ``q`` is the largest level for
which the shares fit in ``R``; the ``+1``s go to the highest-ranked neurons that can still take one.
So a neuron with too few free inputs takes them all and passes the rest of its share on to the others,
equally. This is what handing out the weights one at a time, round-robin in rank order, gives. Only
if all selected neurons together have fewer than ``R`` free inputs is the selection extended, in rank
order, by as many neurons as needed (the layer's density stays constant whenever it has room).

As for Redr-Gradient, positions active before the step (including those removed in it) never grow.
"""
from __future__ import annotations

import torch

from redr.redistribution.base import RedistributionAlgorithm, RedistributionContext, magnitude_removal
from redr.redistribution.dense_grad import DEFAULT_TILE_ROWS, stream_layer_gradients
from redr.redistribution.gradient import _check_common
from redr.redistribution.plan import LayerPlan, RedistributionPlan
from redr.sparse.layout import key_dtype


def selected_count(out_features: int, fraction: float) -> int:
    """``round(fraction * out_features)`` (halves up), at least 1 and at most ``out_features``."""
    return max(1, min(out_features, int(fraction * out_features + 0.5 + 1e-9)))


def water_fill(total: int, capacity: torch.Tensor) -> torch.Tensor:
    """Equal shares of ``total`` over items (in priority order) with capacities; see the module docstring.

    Returns int64 shares summing to ``min(total, capacity.sum())``; every item gets ``min(cap, q)`` or
    ``q + 1`` (the latter for the first items with ``cap > q``).
    """
    cap = capacity.to(torch.int64)
    total = min(int(total), int(cap.sum()))
    if total <= 0 or cap.numel() == 0:
        return torch.zeros_like(cap)
    lo, hi = 0, int(cap.max())
    while lo < hi:  # largest q with sum(min(cap, q)) <= total
        mid = (lo + hi + 1) // 2
        if int(torch.clamp(cap, max=mid).sum()) <= total:
            lo = mid
        else:
            hi = mid - 1
    shares = torch.clamp(cap, max=lo)
    rest = total - int(shares.sum())
    if rest:
        shares[(cap > lo).nonzero().squeeze(1)[:rest]] += 1
    return shares


def neuron_shares(total: int, capacity_ranked: torch.Tensor, n_selected: int) -> torch.Tensor:
    """Shares for neurons in rank order: water-filled over the first ``n_selected``, extended in rank
    order when those cannot take ``total`` between them. Returns a tensor aligned with ``capacity_ranked``."""
    n_all = capacity_ranked.numel()
    shares = torch.zeros(n_all, dtype=torch.int64, device=capacity_ranked.device)
    n = min(n_selected, n_all)
    cum = torch.cumsum(capacity_ranked.to(torch.int64), 0)
    if n < n_all and int(cum[n - 1]) < total:
        n = min(n_all, int(torch.searchsorted(cum, torch.tensor(total, device=cum.device))) + 1)
    shares[:n] = water_fill(total, capacity_ranked[:n])
    return shares


def _row_entries(crow: torch.Tensor, col: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the row within ``rows``, column) of every active entry of the given rows."""
    starts = crow[rows].long()
    counts = crow[rows + 1].long() - starts
    local = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), counts)
    first = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    entry = torch.repeat_interleave(starts, counts) + (torch.arange(local.numel(), device=rows.device) - first)
    return local, col[entry].long()


def largest_per_row(scores: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, col)`` of the ``k[i]`` largest entries of every row ``i`` of ``scores`` (ties: lower column).

    Every ``k[i]`` must be >= 1 and at most the number of entries ``>= 0`` in row ``i``.
    """
    kmax = int(k.max())
    v = torch.topk(scores, kmax, dim=1, sorted=True).values.gather(1, (k - 1).unsqueeze(1))  # k-th largest per row
    chosen = scores > v
    eq = scores == v
    need = k - chosen.sum(1)
    # Rows with more entries equal to their k-th value than places left keep the lowest columns among them;
    # only those rows pay for the running count (a tile-sized int32 temporary otherwise).
    tied = (eq.sum(1) > need).nonzero().squeeze(1)
    if tied.numel():
        sub = eq[tied]
        sub &= torch.cumsum(sub, 1, dtype=torch.int32) <= need[tied].unsqueeze(1)
        eq[tied] = sub
        del sub
    chosen |= eq
    del eq
    return chosen.nonzero(as_tuple=True)


class RedrLoss(RedistributionAlgorithm):
    """Remove by magnitude per layer; grow at the top ``neuron_fraction`` neurons by backpropagated error.

    Options:
        neuron_fraction: fraction of a layer's output neurons that grow (default 0.3, the paper's 30%).
        tile_rows, num_batches: as for :class:`~redr.redistribution.gradient.RedrGradient`.
    """

    name = "loss"
    needs_batches = True

    def __init__(self, neuron_fraction: float = 0.3, tile_rows: int = DEFAULT_TILE_ROWS, num_batches: int | None = None):
        _check_common(tile_rows, num_batches)
        if not 0.0 < neuron_fraction <= 1.0:
            raise ValueError(f"neuron_fraction must be in (0, 1], got {neuron_fraction!r}")
        self.neuron_fraction = float(neuron_fraction)
        self.tile_rows = int(tile_rows)
        self.num_batches = None if num_batches is None else int(num_batches)

    def options(self) -> dict:
        return {"neuron_fraction": self.neuron_fraction, "tile_rows": self.tile_rows, "num_batches": self.num_batches}

    def plan(self, ctx: RedistributionContext) -> RedistributionPlan:
        layers = list(ctx.layers)
        removes = [magnitude_removal(layer, ctx.alpha) for layer in layers]
        grows = [torch.empty(2, 0, dtype=torch.int64, device=layer.values.device) for layer in layers]
        growing_neurons = [0] * len(layers)
        info = {"growing_neurons": growing_neurons, "gradient": None}
        if sum(r.numel() for r in removes) == 0:
            return RedistributionPlan([LayerPlan(r, g) for r, g in zip(removes, grows)], info)

        def consume(lg):
            total = removes[lg.index].numel()
            if total == 0:
                return
            layer, in_f = lg.layer, lg.in_features
            error = lg.neuron_error()
            order = torch.sort(error, descending=True, stable=True).indices
            free = in_f - layer.layout.row_counts()
            shares = neuron_shares(total, free[order], selected_count(lg.out_features, self.neuron_fraction))
            growing = shares > 0
            rows, k = order[growing], shares[growing]
            rows, perm = torch.sort(rows)  # ascending rows: tiles in memory order, grown keys sorted
            k = k[perm]
            growing_neurons[lg.index] = rows.numel()
            crow, col = layer.crow, layer.col
            index_dtype = key_dtype(layer.layout.shape)  # rows and columns fit wherever flat keys do
            picked = []
            for s in range(0, rows.numel(), lg.tile_rows):
                rr, kk = rows[s:s + lg.tile_rows], k[s:s + lg.tile_rows]
                scores = lg.tile(rr).abs_()
                local, cols = _row_entries(crow, col, rr)
                scores[local, cols] = -1  # active before the step: never grows
                r_idx, c_idx = largest_per_row(scores, kk)
                picked.append(torch.stack([rr[r_idx], c_idx]).to(index_dtype))  # narrow: the plan may be half a layer
                del scores
            grows[lg.index] = torch.cat(picked, 1) if picked else grows[lg.index]

        stats = stream_layer_gradients(ctx, consume, self.num_batches, self.tile_rows)
        info["gradient"] = stats.to_dict()
        return RedistributionPlan([LayerPlan(r, g) for r, g in zip(removes, grows)], info)
