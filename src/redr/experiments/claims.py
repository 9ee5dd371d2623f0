"""The paper's claims, checked from a results table.

Input: :class:`~redr.experiments.results.Entry` objects (one configuration over its seeds; build them by
hand for a check of your own numbers, or with :func:`~redr.experiments.results.grid_entries`). Every
decision compares means over seeds of the final test accuracy (or of the mean induced loss); the
evidence gives the means, the standard deviations and the margin, and says when the deciding margin is
smaller than the spread over seeds ("within seed noise").

Status rules, per claim and dataset:

* **not supported**: some comparison the claim makes fails on runs we have (shown with its numbers);
* **not tested**: every comparison we can make holds, but a run the claim needs is missing (listed);
  a claim is never marked supported on partial evidence;
* **supported**: every comparison the claim makes was made and holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

from redr.experiments.grid import DENSITIES, DYNAMIC_ALGORITHMS, GLOBAL_ALGORITHMS, LOCAL_ALGORITHMS, STATIC
from redr.experiments.results import Entry, mean, std

SUPPORTED, NOT_SUPPORTED, NOT_TESTED = "supported", "not supported", "not tested"
NEURON_GAP_POINTS = 2.0

CLAIMS = {
    "dynamic-beats-static": "Every dynamic algorithm beats static sparse training (no redistribution) at every density "
                            "(sections 4.2, 5)",
    "global-beats-local": "The global algorithms (Gradient-Global, Woodfisher) beat the layer-local ones (Random, "
                          "Gradient, Loss) at every density (section 4.2)",
    "global-gap-grows": "... and more so at low density: the global - local gap is larger at d=0.03 than at d=0.1 "
                        "(section 4.2.2)",
    "sparse-beats-param-eq": "At d=0.1 every sparse net beats the parameter-equivalent dense net (section 4)",
    "gradient-global-near-dense": "Gradient-Global at d=0.1 is within 2 points of the neuron-equivalent dense net "
                                  "(section 4.2.1)",
    "woodfisher-lowest-induced-loss": "Woodfisher's induced loss is the lowest of the dynamic algorithms (Fig. 3)",
}


@dataclass
class ClaimResult:
    dataset: str
    key: str
    status: str
    evidence: str
    missing: list = field(default_factory=list)

    @property
    def claim(self) -> str:
        return CLAIMS[self.key]


def pct(values) -> str:
    """Mean +- std of accuracies in percent."""
    m, s = mean(values), std(values)
    return "n/a" if math.isnan(m) else f"{100 * m:.2f} +- {100 * s:.2f}"


class _Table:
    def __init__(self, entries: Iterable[Entry], dataset: str):
        self.dataset = dataset
        self.sparse, self.dense = {}, {}
        for e in entries:
            if e.dataset != dataset or not e.final:
                continue
            if e.is_dense:  # the parameter-equivalent net is the one matched to d=0.1
                if e.model not in self.dense or abs(e.density - 0.1) < 1e-9:
                    self.dense[e.model] = e
            else:
                self.sparse[(e.model, round(e.density, 6))] = e

    def get(self, model: str, density: Optional[float] = None) -> Optional[Entry]:
        if model.startswith("dense-"):
            return self.dense.get(model)
        return self.sparse.get((model, round(density, 6)))

    def densities(self) -> list[float]:
        return sorted({d for _, d in self.sparse}, reverse=True)


def _label(model: str, density: Optional[float] = None) -> str:
    return model if density is None or model.startswith("dense-") else f"{model} d={density:g}"


def _noise(a: Entry, b: Entry, margin: float, values=lambda e: e.final) -> bool:
    return abs(margin) < max(std(values(a)), std(values(b)))


def _capped(items: list, limit: int) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def _decide(failures: list, missing: list, holds: list, what: str) -> tuple[str, str]:
    """Status and evidence from the comparisons that fail, the missing runs and the comparisons that hold
    (each a ``(margin, text)`` pair; the closest one that holds is shown)."""
    parts = []
    total = len(failures) + len(holds)
    if failures:
        parts.append(f"{len(failures)} of {total} comparisons fail: " + _capped([t for _, t in sorted(failures)], 6))
    if holds:
        closest = min(holds)[1]
        parts.append(f"{len(holds)} of {total} hold (closest: {closest})" if failures or len(holds) > 1 else f"holds: {closest}")
    if missing:
        parts.append("missing runs: " + ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    status = NOT_SUPPORTED if failures else NOT_TESTED if missing or not holds else SUPPORTED
    return status, (". ".join(parts) or f"no {what} runs")  # not " | ": the evidence is a markdown table cell


def redistributed(e: Entry) -> bool:
    """False when the runs of a dynamic algorithm never redistributed (e.g. too few epochs): such a run is
    static sparse training in all but name and cannot test a claim about redistribution. Entries without
    induced-loss numbers (hand-made tables) count as redistributed."""
    return not e.induced or any(not math.isnan(v) for v in e.induced)


def _beats(t: _Table, winner: str, loser: str, d_w: Optional[float], d_l: Optional[float],
           failures: list, missing: list, holds: list) -> None:
    a, b = t.get(winner, d_w), t.get(loser, d_l)
    for model, d, e in ((winner, d_w, a), (loser, d_l, b)):
        label = _label(model, d)
        if e is not None and model in DYNAMIC_ALGORITHMS and not redistributed(e):
            label += " (ran, but never redistributed)"
            e = None
            a, b = (None, b) if model == winner else (a, None)
        if e is None and label not in missing:
            missing.append(label)
    if a is None or b is None:
        return
    margin = mean(a.final) - mean(b.final)
    text = (f"{_label(winner, d_w)} {pct(a.final)} vs {_label(loser, d_l)} {pct(b.final)} "
            f"({100 * margin:+.2f} points{', within seed noise' if _noise(a, b, margin) else ''})")
    (holds if margin > 0 else failures).append((margin, text))


def check_dynamic_beats_static(t: _Table) -> ClaimResult:
    failures, missing, holds = [], [], []
    for d in DENSITIES:
        for algo in DYNAMIC_ALGORITHMS:
            _beats(t, algo, STATIC, d, d, failures, missing, holds)
    status, evidence = _decide(failures, missing, holds, "sparse")
    return ClaimResult(t.dataset, "dynamic-beats-static", status, evidence, missing)


def check_global_beats_local(t: _Table) -> ClaimResult:
    failures, missing, holds = [], [], []
    for d in DENSITIES:
        for g in GLOBAL_ALGORITHMS:
            for loc in LOCAL_ALGORITHMS:
                _beats(t, g, loc, d, d, failures, missing, holds)
    status, evidence = _decide(failures, missing, holds, "sparse")
    return ClaimResult(t.dataset, "global-beats-local", status, evidence, missing)


def global_local_gap(t: _Table, d: float) -> Optional[float]:
    """Mean accuracy of the global algorithms minus that of the layer-local ones at density ``d``."""
    g = [t.get(a, d) for a in GLOBAL_ALGORITHMS]
    loc = [t.get(a, d) for a in LOCAL_ALGORITHMS]
    if any(e is None for e in g + loc):
        return None
    return mean(mean(e.final) for e in g) - mean(mean(e.final) for e in loc)


def check_global_gap_grows(t: _Table) -> ClaimResult:
    high, low = max(DENSITIES), min(DENSITIES)
    gaps = {d: global_local_gap(t, d) for d in DENSITIES}
    missing = [_label(a, d) for d in (high, low) for a in GLOBAL_ALGORITHMS + LOCAL_ALGORITHMS if t.get(a, d) is None]
    shown = ", ".join(f"d={d:g}: {100 * g:+.2f} points" if g is not None else f"d={d:g}: n/a" for d, g in gaps.items())
    if gaps[high] is None or gaps[low] is None:
        return ClaimResult(t.dataset, "global-gap-grows", NOT_TESTED,
                           f"global - local gap {shown}. missing runs: {', '.join(missing)}", missing)
    ok = gaps[low] > gaps[high]
    return ClaimResult(t.dataset, "global-gap-grows", SUPPORTED if ok else NOT_SUPPORTED,
                       f"global - local gap (mean accuracy of Gradient-Global and Woodfisher minus mean of Random, "
                       f"Gradient and Loss) {shown}: {'larger' if ok else 'not larger'} at d={low:g} than at d={high:g}")


def check_sparse_beats_param_eq(t: _Table) -> ClaimResult:
    failures, missing, holds = [], [], []
    for algo in (STATIC, *DYNAMIC_ALGORITHMS):
        _beats(t, algo, "dense-param", 0.1, None, failures, missing, holds)
    status, evidence = _decide(failures, missing, holds, "d=0.1")
    return ClaimResult(t.dataset, "sparse-beats-param-eq", status, evidence, missing)


def check_gradient_global_near_dense(t: _Table) -> ClaimResult:
    gg, dense = t.get("gradient-global", 0.1), t.get("dense-neuron")
    missing = [n for n, e in (("gradient-global d=0.1", gg), ("dense-neuron", dense)) if e is None]
    if missing:
        return ClaimResult(t.dataset, "gradient-global-near-dense", NOT_TESTED, "missing runs: " + ", ".join(missing), missing)
    gap = 100 * (mean(dense.final) - mean(gg.final))
    ok = gap <= NEURON_GAP_POINTS
    return ClaimResult(t.dataset, "gradient-global-near-dense", SUPPORTED if ok else NOT_SUPPORTED,
                       f"dense-neuron {pct(dense.final)} - gradient-global d=0.1 {pct(gg.final)} = {gap:.2f} points "
                       f"({'<=' if ok else '>'} {NEURON_GAP_POINTS:g})")


def check_woodfisher_lowest_induced_loss(t: _Table) -> ClaimResult:
    failures, missing, holds = [], [], []
    densities = [d for d in t.densities() if t.get("woodfisher", d) is not None] or [0.1]
    if 0.1 not in [round(d, 6) for d in densities]:
        densities = [0.1] + densities
    for d in densities:
        wf = t.get("woodfisher", d)
        if wf is None or math.isnan(mean(wf.induced)):
            missing.append(f"woodfisher d={d:g} (with a redistribution)")
            continue
        for algo in DYNAMIC_ALGORITHMS:
            if algo == "woodfisher":
                continue
            other = t.get(algo, d)
            if other is None or math.isnan(mean(other.induced)):
                missing.append(f"{algo} d={d:g} (with a redistribution)")
                continue
            margin = mean(other.induced) - mean(wf.induced)
            text = (f"d={d:g}: woodfisher {mean(wf.induced):.4g} vs {algo} {mean(other.induced):.4g}"
                    + (" (within seed noise)" if _noise(wf, other, margin, lambda e: e.induced) else ""))
            (holds if margin > 0 else failures).append((margin, text))
    status, evidence = _decide(failures, missing, holds, "induced-loss")
    return ClaimResult(t.dataset, "woodfisher-lowest-induced-loss", status,
                       "mean training-loss increase per redistribution; " + evidence, missing)


CHECKS = (check_dynamic_beats_static, check_global_beats_local, check_global_gap_grows, check_sparse_beats_param_eq,
          check_gradient_global_near_dense, check_woodfisher_lowest_induced_loss)


def check_claims(entries: Iterable[Entry], datasets: Optional[Iterable[str]] = None) -> list[ClaimResult]:
    """Every claim on every dataset of ``entries`` (or the ``datasets`` given: those without runs are not tested)."""
    entries = list(entries)
    names = list(dict.fromkeys(datasets if datasets is not None else (e.dataset for e in entries)))
    results = []
    for name in names:
        table = _Table(entries, name)
        results += [check(table) for check in CHECKS]
    return results
