"""Sampled vs exact growth (``redr reproduce growth``): final test accuracy per algorithm and width.

"Within seed noise" is an equivalence claim, and a non-significant difference alone is weak evidence for it
(three seeds rarely find any difference significant). So each pair of configurations reports:

* the mean +- std (seeds) of both paths and their difference, sampled - exact;
* Welch's two-sided t-test of the difference at :data:`LEVEL` (the project's test for every claim): a
  p below it means the two paths **differ**;
* the difference's 95% confidence interval (Welch) and two one-sided tests (TOST) at +-:data:`MARGIN`
  accuracy (0.5 points): a TOST p below :data:`LEVEL` (the 90% interval inside the margin) means the paths
  are **equivalent** within the margin. Neither: **no difference found**, and the interval says how large
  a difference these seeds cannot rule out.
"""
from __future__ import annotations

import math
from typing import Iterable

from redr.experiments.report.names import label, order
from redr.experiments.report.prose import heading
from redr.experiments.report.stats import equivalence_test, paired_test
from redr.experiments.report.table import Table, markdown
from redr.experiments.results import Run, mean, std

LEVEL = 0.05
#: The equivalence margin of the TOST, in accuracy (0.005 = 0.5 percentage points).
MARGIN = 0.005
PATHS = ("exact", "sampled")
DIFFER, EQUIVALENT, NO_DIFFERENCE, NOT_TESTED = "differ", "equivalent", "no difference found", "not tested"

COLUMNS = ("dataset", "net", "hidden", "algorithm", "density", "epochs", "train_rows", "batch_size", "lr", "candidates", "seeds_exact",
           "seeds_sampled", "exact_mean", "exact_std", "sampled_mean", "sampled_std", "difference", "ci95_low",
           "ci95_high", "welch_p", "tost_margin", "tost_p", "verdict", "pairs", "paired_ci95_low", "paired_ci95_high",
           "paired_p")

METHOD = (f"Final test accuracy (%) of each gradient algorithm trained with exact growth (`growth=\"exact\"`: the "
          f"dense gradient, in tiles) and sampled growth (`growth=\"sampled\"`: seeded candidates scored by SDDMM), "
          f"mean ± std over seeds; both runs of a seed share the initialisation and the batch order. Difference = "
          f"sampled - exact, in points, with its 95% confidence interval (Welch). **Welch p**: the project's "
          f"two-sided Welch t-test of the difference (p < {LEVEL:g}: the paths *differ*). **TOST p**: two one-sided "
          f"Welch tests against ±{100 * MARGIN:g} points (p < {LEVEL:g}: *equivalent* within ±{100 * MARGIN:g} "
          f"points, i.e. the 90% interval lies inside). Neither: *no difference found*: not a proof of "
          f"equivalence; the interval shows how large a difference these seeds cannot exclude. **Paired** "
          f"(supplementary, not the verdict): the same seed's two runs differ only in the growth path, so the "
          f"per-seed differences are also tested alone (one-sample t, n - 1 degrees of freedom), which removes "
          f"the seed-to-seed spread that both paths share.")


def is_growth_run(run: Run) -> bool:
    return run.model == "sparse" and run.algorithm_options.get("growth") in PATHS


def _key(run: Run) -> tuple:
    return (run.dataset, "-".join(map(str, run.hidden)), run.algorithm, run.density, len(run.rows),
            run.config.get("train_rows"), run.config.get("batch_size"), run.config.get("lr"))


def verdict(result) -> str:
    if math.isnan(result.welch.p):
        return NOT_TESTED
    if result.welch.p < LEVEL and result.welch.estimate != 0:
        return DIFFER
    return EQUIVALENT if result.p_tost < LEVEL else NO_DIFFERENCE


def growth_table(runs: Iterable[Run]) -> Table:
    """One record per (dataset, width, algorithm, budget) that has runs of either path."""
    groups: dict = {}
    for run in runs:
        if run.status == "done" and run.rows and is_growth_run(run):
            sizes = (run.info.get("model") or {}).get("sizes") or ["?", *run.hidden, "?"]
            entry = groups.setdefault(_key(run), {"exact": {}, "sampled": {}, "candidates": None,
                                                  "net": "-".join(map(str, sizes))})
            path = run.algorithm_options["growth"]
            entry[path][run.seed] = run.final_acc
            if path == "sampled":
                entry["candidates"] = run.algorithm_options.get("candidates")
    table = Table("growth", COLUMNS)
    for key in sorted(groups, key=lambda k: (k[0], int(k[1].split("-")[0]), order(k[2]), k[3], k[4], k[5] or 0)):
        dataset, hidden, algorithm, density, epochs, train_rows, batch_size, lr = key
        by_seed = groups[key]
        exact, sampled = list(by_seed["exact"].values()), list(by_seed["sampled"].values())
        result = equivalence_test(sampled, exact, MARGIN, LEVEL)
        seeds = sorted(set(by_seed["exact"]) & set(by_seed["sampled"]))
        paired, paired_low, paired_high = paired_test([by_seed["sampled"][s] for s in seeds],
                                                      [by_seed["exact"][s] for s in seeds], LEVEL)
        table.add(dataset=dataset, net=groups[key]["net"], hidden=hidden, algorithm=algorithm, density=density, epochs=epochs,
                  train_rows=train_rows, batch_size=batch_size, lr=lr, candidates=groups[key]["candidates"], seeds_exact=len(exact),
                  seeds_sampled=len(sampled), exact_mean=mean(exact), exact_std=std(exact), sampled_mean=mean(sampled),
                  sampled_std=std(sampled), difference=result.welch.estimate, ci95_low=result.low,
                  ci95_high=result.high, welch_p=result.welch.p, tost_margin=MARGIN, tost_p=result.p_tost,
                  verdict=verdict(result), pairs=len(seeds), paired_ci95_low=paired_low,
                  paired_ci95_high=paired_high, paired_p=paired.p)
    return table


def _acc(m, s, n) -> str:
    return "-" if n == 0 else f"{100 * m:.2f} ± {100 * s:.2f} ({n})"


def _interval(low, high) -> str:
    return "-" if math.isnan(low) else f"[{100 * low:+.2f}, {100 * high:+.2f}]"


def _p(value) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.3g}"


def growth_markdown(table: Table) -> list[str]:
    """The section's Markdown: the method, the table, one summary line per width."""
    blocks = [heading("Sampled vs exact growth (issue 15)")]
    if not table.records:
        return blocks + ["_Not run_: `redr reproduce growth`.\n"]
    rows = []
    for r in table.records:
        rows.append([r["net"], label(r["algorithm"]),
                     f"d={r['density']:g}, {r['epochs']} ep., {'all' if r['train_rows'] is None else format(r['train_rows'], ',')}"
                     f" rows, batch {r['batch_size']}, lr {r['lr']:g}",
                     _acc(r["exact_mean"], r["exact_std"], r["seeds_exact"]),
                     _acc(r["sampled_mean"], r["sampled_std"], r["seeds_sampled"]),
                     "-" if math.isnan(r["difference"]) else f"{100 * r['difference']:+.2f}",
                     _interval(r["ci95_low"], r["ci95_high"]), _p(r["welch_p"]), _p(r["tost_p"]), r["verdict"],
                     _interval(r["paired_ci95_low"], r["paired_ci95_high"]), _p(r["paired_p"])])
    blocks += [METHOD + "\n",
               markdown(["net", "algorithm", "budget", "exact (seeds)", "sampled (seeds)", "diff (points)",
                         "95% CI", "Welch p", f"TOST p (±{100 * MARGIN:g})", "verdict", "paired 95% CI",
                         "paired p"], rows) + "\n"]
    candidates = sorted({r["candidates"] for r in table.records if r["candidates"] is not None})
    if candidates:
        blocks.append("Sampled path: " + ", ".join(f"{c:g}" for c in candidates) + " candidates per weight to grow.\n")
    for hidden in dict.fromkeys(r["hidden"] for r in table.records):
        of = [r for r in table.records if r["hidden"] == hidden]
        counts = {v: sum(r["verdict"] == v for r in of) for v in (DIFFER, EQUIVALENT, NO_DIFFERENCE, NOT_TESTED)}
        blocks.append(f"{of[0]['net']}: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" (of {len(of)}).\n")
    return blocks
