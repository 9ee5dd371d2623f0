"""The paper's claims, each decided by a stated test over seeds.

Input: :class:`~redr.experiments.results.Entry` objects (one configuration over its seeds; build them by
hand to check numbers of your own, or with :func:`~redr.experiments.results.grid_entries`).

A claim is a set of comparisons ("A beats B"). Each comparison is a two-sided Welch's t-test at
:data:`LEVEL` over the seeds' values (final test accuracy, or mean induced loss), see
:mod:`~redr.experiments.report.stats`:

* **for**: p < LEVEL and the difference has the claimed sign;
* **against**: p < LEVEL and it has the other sign;
* **unresolved**: p >= LEVEL, or fewer than two seeds on a side (no variance to test with).

A claim is then **contradicted** when any comparison is against (even if others are missing), **not
tested** when a run it needs is missing (missing runs never count as support), **supported** when every
comparison is for, and **not resolved** otherwise: these seeds cannot tell the difference from seed
noise (more seeds might). The raw means and standard deviations stay in the evidence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from redr.experiments.grid import DENSITIES
from redr.experiments.report.names import DYNAMIC, GLOBAL, LOCAL, STATIC
from redr.experiments.report.stats import TestResult, contrast_test
from redr.experiments.results import Entry, mean, std

SUPPORTED, CONTRADICTED, NOT_RESOLVED, NOT_TESTED = "supported", "contradicted", "not resolved", "not tested"
STATUSES = (SUPPORTED, CONTRADICTED, NOT_RESOLVED, NOT_TESTED)
FOR, AGAINST, UNRESOLVED = "for", "against", "unresolved"
#: Significance level of every comparison (two-sided).
LEVEL = 0.05
NEURON_GAP_POINTS = 2.0
#: The paper (section 4.2.1) names these two as the global algorithms with the best accuracies. Redr-Woodtaylor
#: is global too (registry scope) but the paper does not count it among the best (it needs a large dampening,
#: section 4.3.3), so the claims about "the global algorithms" compare these two only.
BEST_GLOBAL = tuple(a for a in GLOBAL if a in ("gradient-global", "woodfisher"))

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
class Comparison:
    """One tested statement: ``text`` shows the raw means; ``result`` tests the claimed-positive contrast."""

    text: str
    result: TestResult
    points: bool = True  # accuracy differences are shown in percentage points, induced losses as they are

    @property
    def outcome(self) -> str:
        r = self.result
        if math.isnan(r.p) or r.p >= LEVEL or r.estimate == 0:
            return UNRESOLVED
        return FOR if r.estimate > 0 else AGAINST

    def describe(self) -> str:
        r = self.result
        diff = f"{100 * r.estimate:+.2f} points" if self.points else f"{r.estimate:+.3g}"
        p = "p n/a (fewer than 2 seeds)" if math.isnan(r.p) else f"p = {r.p:.3g}"
        return f"{self.text} ({diff}, {p}: {self.outcome})"


@dataclass
class ClaimResult:
    dataset: str
    key: str
    status: str
    evidence: str
    comparisons: list = field(default_factory=list)
    missing: list = field(default_factory=list)

    @property
    def claim(self) -> str:
        return CLAIMS[self.key]

    def count(self, outcome: str) -> int:
        return sum(c.outcome == outcome for c in self.comparisons)

    @property
    def counts(self) -> str:
        """'3 for / 0 against / 15 unresolved of 18' (missing comparisons are not in N)."""
        return (f"{self.count(FOR)} for / {self.count(AGAINST)} against / {self.count(UNRESOLVED)} unresolved "
                f"of {len(self.comparisons)}")


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


def _capped(items: list, limit: int) -> str:
    return "; ".join(items[:limit]) + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def decide(comparisons: Sequence[Comparison], missing: Sequence[str]) -> str:
    """The claim's status from its comparisons and the runs it needed but lacked."""
    outcomes = [c.outcome for c in comparisons]
    if AGAINST in outcomes:
        return CONTRADICTED
    if missing or not comparisons:
        return NOT_TESTED
    return SUPPORTED if all(o == FOR for o in outcomes) else NOT_RESOLVED


def _result(t: _Table, key: str, comparisons: list, missing: list, prefix: str = "") -> ClaimResult:
    """The claim's status and its evidence: the comparisons against, the unresolved ones closest to against,
    the weakest one for, and the missing runs."""
    by = {o: sorted((c for c in comparisons if c.outcome == o), key=lambda c: c.result.estimate)
          for o in (FOR, AGAINST, UNRESOLVED)}
    parts = [prefix] if prefix else []  # the counts are the claim's own column (ClaimResult.counts)
    if by[AGAINST]:
        parts.append("against: " + _capped([c.describe() for c in by[AGAINST]], 4))
    if by[UNRESOLVED]:
        order = " (closest to against first)" if len(by[UNRESOLVED]) > 1 else ""
        parts.append(f"unresolved{order}: " + _capped([c.describe() for c in by[UNRESOLVED]], 3))
    if by[FOR] and len(comparisons) > 1:
        weakest = max(by[FOR], key=lambda c: c.result.p)
        parts.append(f"weakest for: {weakest.describe()}")
    elif by[FOR]:
        parts.append(by[FOR][0].describe())
    if missing:
        parts.append("missing runs: " + ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    evidence = ". ".join(parts) or "no runs"  # not " | ": the evidence is a markdown table cell
    return ClaimResult(t.dataset, key, decide(comparisons, missing), evidence, comparisons, missing)


def redistributed(e: Entry) -> bool:
    """False when the runs of a dynamic algorithm never redistributed (e.g. too few epochs): such a run is
    static sparse training in all but name and cannot test a claim about redistribution. Entries without
    induced-loss numbers (hand-made tables) count as redistributed."""
    return not e.induced or any(not math.isnan(v) for v in e.induced)


def _usable(t: _Table, model: str, density: Optional[float], missing: list) -> Optional[Entry]:
    """The entry of ``model`` at ``density``, or None (then its label is added to ``missing``)."""
    e = t.get(model, density)
    label = _label(model, density)
    if e is not None and model in DYNAMIC and not redistributed(e):
        e, label = None, label + " (ran, but never redistributed)"
    if e is None and label not in missing:
        missing.append(label)
    return e


def _beats(t: _Table, winner: str, loser: str, d_w: Optional[float], d_l: Optional[float],
           comparisons: list, missing: list) -> None:
    a, b = _usable(t, winner, d_w, missing), _usable(t, loser, d_l, missing)
    if a is not None and b is not None:
        text = f"{_label(winner, d_w)} {pct(a.final)} vs {_label(loser, d_l)} {pct(b.final)}"
        comparisons.append(Comparison(text, contrast_test([(1.0, a.final), (-1.0, b.final)])))


def check_dynamic_beats_static(t: _Table) -> ClaimResult:
    comparisons, missing = [], []
    for d in DENSITIES:
        for algo in DYNAMIC:
            _beats(t, algo, STATIC, d, d, comparisons, missing)
    return _result(t, "dynamic-beats-static", comparisons, missing)


def check_global_beats_local(t: _Table) -> ClaimResult:
    comparisons, missing = [], []
    for d in DENSITIES:
        for g in BEST_GLOBAL:
            for loc in LOCAL:
                _beats(t, g, loc, d, d, comparisons, missing)
    return _result(t, "global-beats-local", comparisons, missing)


def global_local_gap(t: _Table, d: float) -> Optional[float]:
    """Mean accuracy of the global algorithms minus that of the layer-local ones at density ``d``."""
    g = [t.get(a, d) for a in BEST_GLOBAL]
    loc = [t.get(a, d) for a in LOCAL]
    if any(e is None for e in g + loc):
        return None
    return mean(mean(e.final) for e in g) - mean(mean(e.final) for e in loc)


def _gap_terms(t: _Table, d: float, sign: float) -> list:
    """The gap at ``d`` as a contrast: +1/|G| per global algorithm, -1/|L| per local one (times ``sign``)."""
    return ([(sign / len(BEST_GLOBAL), t.get(a, d).final) for a in BEST_GLOBAL]
            + [(-sign / len(LOCAL), t.get(a, d).final) for a in LOCAL])


def check_global_gap_grows(t: _Table) -> ClaimResult:
    high, low = max(DENSITIES), min(DENSITIES)
    gaps = {d: global_local_gap(t, d) for d in DENSITIES}
    missing = []
    for d in (high, low):
        for a in BEST_GLOBAL + LOCAL:
            _usable(t, a, d, missing)
    shown = ", ".join(f"d={d:g}: {100 * g:+.2f} points" if g is not None else f"d={d:g}: n/a" for d, g in gaps.items())
    prefix = (f"global - local gap (mean accuracy of {', '.join(BEST_GLOBAL)} minus mean of {', '.join(LOCAL)}) "
              f"{shown}")
    comparisons = []
    if not missing:
        text = f"gap at d={low:g} minus gap at d={high:g}"
        comparisons.append(Comparison(text, contrast_test(_gap_terms(t, low, 1.0) + _gap_terms(t, high, -1.0))))
    return _result(t, "global-gap-grows", comparisons, missing, prefix)


def check_sparse_beats_param_eq(t: _Table) -> ClaimResult:
    comparisons, missing = [], []
    for algo in (STATIC, *DYNAMIC):
        _beats(t, algo, "dense-param", 0.1, None, comparisons, missing)
    return _result(t, "sparse-beats-param-eq", comparisons, missing)


def check_gradient_global_near_dense(t: _Table) -> ClaimResult:
    """Tested as (gradient-global - dense-neuron) + 2 points > 0: the gap is below 2 points."""
    missing = []
    gg, dense = _usable(t, "gradient-global", 0.1, missing), _usable(t, "dense-neuron", None, missing)
    comparisons = []
    if not missing:
        gap = 100 * (mean(dense.final) - mean(gg.final))
        text = (f"dense-neuron {pct(dense.final)} - gradient-global d=0.1 {pct(gg.final)} = {gap:.2f} points, "
                f"margin to {NEURON_GAP_POINTS:g} points")
        test = contrast_test([(1.0, gg.final), (-1.0, dense.final)], shift=NEURON_GAP_POINTS / 100)
        comparisons.append(Comparison(text, test))
    return _result(t, "gradient-global-near-dense", comparisons, missing)


def check_woodfisher_lowest_induced_loss(t: _Table) -> ClaimResult:
    comparisons, missing = [], []
    densities = [d for d in t.densities() if t.get("woodfisher", d) is not None] or [0.1]
    if 0.1 not in [round(d, 6) for d in densities]:
        densities = [0.1] + densities
    for d in densities:
        wf = t.get("woodfisher", d)
        if wf is None or math.isnan(mean(wf.induced)):
            missing.append(f"woodfisher d={d:g} (with a redistribution)")
            continue
        for algo in DYNAMIC:
            if algo == "woodfisher":
                continue
            other = t.get(algo, d)
            if other is None or math.isnan(mean(other.induced)):
                missing.append(f"{algo} d={d:g} (with a redistribution)")
                continue
            text = f"d={d:g}: woodfisher {mean(wf.induced):.4g} vs {algo} {mean(other.induced):.4g}"
            test = contrast_test([(1.0, other.induced), (-1.0, wf.induced)])
            comparisons.append(Comparison(text, test, points=False))
    return _result(t, "woodfisher-lowest-induced-loss", comparisons, missing,
                   "mean training-loss increase per redistribution")


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
