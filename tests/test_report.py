"""The report package: Welch's test, the claims decided with it, tables (Markdown and CSV from one object),
portable paths, the accuracy figure's zoom panel."""
from __future__ import annotations

import csv
import json
import math
import re

import pytest

from redr.experiments.grid import DENSITIES, build_cells, run_name
from redr.experiments.report.claims import (BEST_GLOBAL, CONTRADICTED, LEVEL, NOT_RESOLVED, NOT_TESTED, SUPPORTED,
                                            check_claims)
from redr.experiments.report.stats import regularized_beta, t_cdf, t_two_sided_p, welch_test
from redr.experiments.results import Entry, grid_entries, load_runs


# ---------------------------------------------------------------------- references, written from the definitions
def simpson(f, a: float, b: float, n: int = 20_000) -> float:
    h = (b - a) / n
    return h / 3 * (f(a) + f(b) + sum((4 if i % 2 else 2) * f(a + i * h) for i in range(1, n)))


def t_density(x: float, df: float) -> float:
    return math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi) \
        * (1 + x * x / df) ** (-(df + 1) / 2)


def welch_by_hand(a, b):
    """t and Welch-Satterthwaite df from the textbook formulas."""
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    return (ma - mb) / math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


# ---------------------------------------------------------------------- Welch's test
@pytest.mark.parametrize("t,df", [(12.706, 1), (4.303, 2), (2.571, 5), (2.228, 10), (2.042, 30), (1.960, 10 ** 6)])
def test_t_critical_values_of_the_textbook_table_give_p_005(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)


def test_t_cdf_closed_forms_for_one_and_two_degrees_of_freedom():
    for t in (-3.0, -0.4, 0.0, 0.7, 5.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("t,df", [(0.3, 3.7), (1.3, 3.7), (2.9, 1.5), (4.0, 24.99), (0.05, 60.0)])
def test_t_p_value_matches_integrating_the_density(t, df):
    assert t_two_sided_p(t, df) == pytest.approx(1 - 2 * simpson(lambda x: t_density(x, df), 0.0, t), abs=1e-9)


@pytest.mark.parametrize("x,a,b", [(0.2, 2.5, 3.5), (0.8, 2.5, 3.5), (0.5, 1.0, 7.0), (0.93, 4.0, 1.5)])
def test_regularized_beta_matches_integration(x, a, b):
    density = lambda u: u ** (a - 1) * (1 - u) ** (b - 1)  # noqa: E731
    complete = math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))  # B(a, b)
    assert regularized_beta(x, a, b) == pytest.approx(simpson(density, 0, x) / complete, abs=1e-9)


def test_welch_on_a_textbook_example():
    # Welch's t-test example 1 of the Wikipedia article: t = -2.46, df = 25.0, p = 0.021
    a = [27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7, 21.4]
    b = [27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5, 24.4]
    r = welch_test(a, b)
    t, df = welch_by_hand(a, b)
    assert (r.t, r.df) == (pytest.approx(t, rel=1e-12), pytest.approx(df, rel=1e-12))
    assert round(r.t, 2) == -2.46 and round(r.df, 1) == 25.0 and round(r.p, 3) == 0.021
    assert r.estimate == pytest.approx(sum(a) / 15 - sum(b) / 15)


def test_welch_edge_cases():
    assert math.isnan(welch_test([0.8], [0.7, 0.71]).p)  # one seed: no variance to test with
    assert welch_test([0.8, 0.8], [0.7, 0.7]).p == 0.0  # no spread at all: the difference is exact
    assert welch_test([0.8, 0.8], [0.8, 0.8]).p == 1.0
    assert welch_test([0.8, 0.82, math.nan], [0.7, 0.71]).estimate == pytest.approx(0.105)  # NaN seeds ignored


# ---------------------------------------------------------------------- the claims
SEEDS = (-0.002, 0.0, 0.002)  # three seeds around each mean: sample std 0.002


def paper_like_table(dataset="kmnist") -> list[Entry]:
    """Hand-made numbers shaped like the paper's KMNIST results: every difference a claim makes is at least
    one point with a std of 0.002, so Welch's t >= 0.01 / (0.002 sqrt(2/3)) = 6.1 at df = 4: p < 0.003."""
    base = {"none": 0.80, "random": 0.84, "gradient": 0.85, "loss": 0.85, "woodtaylor": 0.86,
            "gradient-global": 0.88, "woodfisher": 0.88}
    drop = {0.1: 0.0, 0.06: 0.02, 0.03: 0.04}
    induced = {"random": 0.5, "gradient": 0.5, "gradient-global": 0.55, "loss": 0.5, "woodfisher": 0.05,
               "woodtaylor": 0.3}
    entries = []
    for d in DENSITIES:
        for algo, acc in base.items():
            extra = 0.0 if algo in ("gradient-global", "woodfisher", "none") else -drop[d] / 2  # gap grows at low d
            value = acc - drop[d] + extra
            loss = induced.get(algo, math.nan)
            entries.append(Entry(dataset, algo, d, final=[value + s for s in SEEDS], best=[value + 0.01] * 3,
                                 induced=[loss * f for f in (0.9, 1.0, 1.1)]))
    # 0.6 points below gradient-global d=0.1: the margin to 2 points is 1.4 points (t = 8.6)
    entries.append(Entry(dataset, "dense-neuron", 0.1, final=[0.886 + s for s in SEEDS], best=[0.9] * 3))
    entries.append(Entry(dataset, "dense-param", 0.1, final=[0.78 + s for s in SEEDS], best=[0.79] * 3))
    return entries


def _set(entries, model, density, final=None, induced=None):
    for e in entries:
        if e.model == model and (density is None or e.density == density):
            e.final = final if final is not None else e.final
            e.induced = induced if induced is not None else e.induced


def claims(entries, datasets=None):
    return {c.key: c for c in check_claims(entries, datasets)}


def statuses(entries, datasets=None):
    return {k: c.status for k, c in claims(entries, datasets).items()}


def test_clear_differences_support_every_claim():
    got = claims(paper_like_table())
    assert {k: c.status for k, c in got.items()} == dict.fromkeys(got, SUPPORTED)
    assert got["dynamic-beats-static"].counts == "18 for / 0 against / 0 unresolved of 18"
    assert got["global-beats-local"].counts == "18 for / 0 against / 0 unresolved of 18"  # 2 global x 3 local x 3 d
    assert got["sparse-beats-param-eq"].counts == "7 for / 0 against / 0 unresolved of 7"


def test_clear_differences_the_other_way_contradict():
    entries = paper_like_table()
    _set(entries, "loss", 0.03, final=[0.95 + s for s in SEEDS])  # a local algorithm beats the global ones
    _set(entries, "gradient", 0.1, final=[0.70 + s for s in SEEDS])  # below static sparse and the param-eq net
    _set(entries, "woodfisher", None, induced=[0.8, 0.9, 1.0])
    _set(entries, "dense-neuron", None, final=[0.93 + s for s in SEEDS])  # 5 points above gradient-global
    got = claims(entries)
    assert {k: c.status for k, c in got.items()} == dict.fromkeys(got, CONTRADICTED)
    assert "gradient d=0.1 70.00 +- 0.20 vs none d=0.1 80.00 +- 0.20 (-10.00 points" in got["dynamic-beats-static"].evidence
    assert got["dynamic-beats-static"].counts == "17 for / 1 against / 0 unresolved of 18"
    assert "= 5.00 points" in got["gradient-global-near-dense"].evidence
    for c in got.values():  # evidence goes into a markdown table cell
        assert "|" not in c.evidence


def test_a_difference_within_the_seed_noise_is_not_resolved():
    entries = paper_like_table()
    wide = [0.78, 0.805, 0.83]  # mean 0.805, sd 0.025, against static sparse 0.80 +- 0.002
    _set(entries, "gradient", 0.1, final=wide)
    # by hand: t = 0.005 / sqrt(0.025^2 / 3 + 0.002^2 / 3) = 0.3453, df = 2.03: p = 0.76, far above 0.05
    t, df = welch_by_hand(wide, [0.798, 0.8, 0.802])
    assert t == pytest.approx(0.3453, abs=1e-4) and df == pytest.approx(2.03, abs=0.01)
    got = claims(entries)["dynamic-beats-static"]
    assert got.status == NOT_RESOLVED and got.counts == "17 for / 0 against / 1 unresolved of 18"
    unresolved = [c for c in got.comparisons if c.outcome == "unresolved"][0]
    assert unresolved.result.t == pytest.approx(t) and unresolved.result.p == pytest.approx(0.76, abs=0.01)
    assert unresolved.result.p > LEVEL and "p = 0.762: unresolved" in got.evidence


def test_gap_and_near_dense_are_tested_as_contrasts():
    entries = paper_like_table()
    # gap at d=0.03 minus gap at d=0.1 is +2 points: by hand its se is sqrt(4 (1/2)^2 + 6 (1/3)^2) * 0.002/sqrt(3)
    got = claims(entries)
    test = got["global-gap-grows"].comparisons[0].result
    se = math.sqrt(4 / 4 + 6 / 9) * 0.002 / math.sqrt(3)
    assert test.estimate == pytest.approx(0.02) and test.t == pytest.approx(0.02 / se)
    near = got["gradient-global-near-dense"].comparisons[0].result  # 0.88 - 0.886 + 0.02
    assert near.estimate == pytest.approx(0.014) and near.t == pytest.approx(0.014 / (0.002 * math.sqrt(2 / 3)))
    _set(entries, "dense-neuron", None, final=[0.90, 0.89, 0.91])  # 2.0 points above: exactly on the line
    assert statuses(entries)["gradient-global-near-dense"] == NOT_RESOLVED


def test_missing_runs_never_count_as_support():
    entries = [e for e in paper_like_table() if not (e.model == "woodtaylor" and e.density == 0.06)
               and e.model != "dense-neuron"]
    got = statuses(entries)
    assert got["dynamic-beats-static"] == NOT_TESTED and got["sparse-beats-param-eq"] == SUPPORTED
    assert got["gradient-global-near-dense"] == NOT_TESTED and got["global-beats-local"] == SUPPORTED
    assert set(statuses([], ["higgs"]).values()) == {NOT_TESTED}
    _set(entries, "gradient", 0.1, final=[0.70 + s for s in SEEDS])  # a comparison against: contradicted anyway
    assert statuses(entries)["dynamic-beats-static"] == CONTRADICTED
    never = paper_like_table()
    for e in never:
        if e.model not in ("none", "dense-neuron", "dense-param"):
            e.induced = [math.nan] * 3  # the runs never redistributed (too few epochs)
    got = statuses(never)
    assert got["dynamic-beats-static"] == NOT_TESTED and got["woodfisher-lowest-induced-loss"] == NOT_TESTED


def test_the_global_algorithms_of_the_claims_are_global_in_the_registry():
    from redr.redistribution.algorithms.registry import ALGORITHMS

    assert BEST_GLOBAL == ("gradient-global", "woodfisher")
    assert all(ALGORITHMS[a].scope == "global" for a in BEST_GLOBAL)


# ---------------------------------------------------------------------- reports on disk
def write_fake_runs(out, table: list[Entry]) -> None:
    """Finished run directories on disk whose final accuracies and induced losses are ``table``'s."""
    from redr.experiments.runner import _write_cell
    from redr.training.config import RunConfig
    from redr.training.rundir import write_metrics

    for e in table:
        for seed, (acc, induced) in enumerate(zip(e.final, e.induced or [math.nan] * len(e.final))):
            model = e.model if e.is_dense else "sparse"
            options = {"dataset": e.dataset, "model": model, "algorithm": "none" if e.is_dense else e.model,
                       "density": e.density, "epochs": 3, "seed": seed}
            cell = build_cells("synthetic", seeds=1)[0]
            cell.name, cell.options = run_name(options), options
            run = out / cell.name
            _write_cell(run, cell)
            config = RunConfig.from_options(**options, device="cpu")
            (run / "config.json").write_text(json.dumps({"config": config.to_dict(), "model": {"sizes": [32, 64, 64, 10]}}))
            rows = [{"epoch": 1, "test_acc": acc - 0.1, "alpha": 0.2, "loss_before_redistribution": 1.0,
                     "loss_after_redistribution": 1.0 + induced, "nnz[0]": 200, "epoch_seconds": 0.1},
                    {"epoch": 2, "test_acc": acc - 0.01, "alpha": 0.0, "loss_before_redistribution": math.nan,
                     "loss_after_redistribution": math.nan, "nnz[0]": 200, "epoch_seconds": 0.1},
                    {"epoch": 3, "test_acc": acc, "alpha": 0.0, "loss_before_redistribution": math.nan,
                     "loss_after_redistribution": math.nan, "nnz[0]": 200, "epoch_seconds": 0.1}]
            write_metrics(run / "metrics.csv", rows)
            (run / "DONE").write_text("done\n")


def test_claims_from_the_runs_on_disk(tmp_path):
    table = paper_like_table("synthetic")
    for e in table:  # one seed each: fewer files, and nothing can be resolved
        e.final, e.induced = e.final[:1], e.induced[:1]
    write_fake_runs(tmp_path, table)
    entries = grid_entries(load_runs(tmp_path))
    assert len(entries) == len(table)
    assert set(statuses(entries).values()) == {NOT_RESOLVED}
    (tmp_path / run_name({"dataset": "synthetic", "model": "dense-neuron", "seed": 0}) / "DONE").unlink()  # unfinished
    assert statuses(grid_entries(load_runs(tmp_path)))["gradient-global-near-dense"] == NOT_TESTED


@pytest.fixture(scope="module")
def fake_report(tmp_path_factory):
    """A report of two-seed fake runs, with absolute paths in its recorded command and in a failed run."""
    from redr.experiments.report import write_report

    out = tmp_path_factory.mktemp("report")
    table = [e for e in paper_like_table("synthetic") if e.density == 0.1 or e.model == "none"]
    for e in table:
        e.final, e.induced = e.final[:2], e.induced[:2]
    write_fake_runs(out, table)
    command = ["redr", "reproduce", "synthetic", "--data-dir", "/home/someone/data", f"--out={out}"]
    (out / "experiment.json").write_text(json.dumps({"invocations": [{"command": command, "started": "2026"}]}))
    failed = out / run_name({"dataset": "synthetic", "model": "sparse", "algorithm": "random", "density": 0.5,
                             "seed": 0})
    failed.mkdir()
    (failed / "config.json").write_text(json.dumps({"config": {"dataset": "synthetic", "density": 0.5}}))
    (failed / "FAILED").write_text(f"OSError: cannot read {out}/data/x.bin\n")
    write_report(out)
    return out


def _csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_markdown_and_csv_of_a_table_show_the_same_numbers(fake_report):
    report = (fake_report / "report.md").read_text()
    rows = _csv(fake_report / "tables/accuracy.csv")
    assert len(rows) == 7 + 2 + 2  # d=0.1: 7 sparse models, static at 0.06 and 0.03, 2 dense nets
    final_table = report.split("Final test accuracy")[1].split("Best test accuracy")[0]
    for r in rows:
        cell = f"{100 * float(r['final_mean']):.2f} ± {100 * float(r['final_std']):.2f} ({r['seeds']})"
        assert cell in final_table, cell
    claims_rows = _csv(fake_report / "tables/claims.csv")
    for r in claims_rows:
        assert f"**{r['status']}** | {r['for']} for / {r['against']} against / {r['unresolved']} unresolved " \
               f"of {r['comparisons']}" in report


def test_table_views_render_the_records():
    from redr.experiments.report.table import Table, markdown, pivot

    t = Table("x", ("model", "density", "value"))
    t.add(model="a", density=0.1, value=0.5)
    t.add(model="dense", density=0.1, value=0.7)
    with pytest.raises(ValueError, match="wrong keys: extra"):
        t.add(model="b", density=0.1, value=1, extra=2)
    md = pivot(t.records, lambda r: r["model"], lambda r: None if r["model"] == "dense" else r["density"],
               lambda r: f"{r['value']:.1f}", ["a", "dense"], [0.1, 0.03], str, lambda d: f"d={d:g}", "model")
    assert md.splitlines()[2:] == ["| a | 0.5 | - |", "| dense | 0.7 | 0.7 |"]
    assert markdown(["claim", "evidence"], [["a", "x | y"]]).splitlines()[2] == "| a | x \\| y |"


def test_report_names_no_absolute_path(fake_report):
    report = (fake_report / "report.md").read_text()
    assert str(fake_report) not in report and "/home/someone" not in report
    assert re.findall(r"(?<![\w./:~-])/(?:[\w.+~-]+/)+", report) == []
    assert "--data-dir …/data" in report and "cannot read …/x.bin" in report


def test_paths_inside_the_project_become_relative(tmp_path):
    from redr.experiments.report.paths import portable, project_root, scrub

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "results" / "x").mkdir(parents=True)
    root = project_root(tmp_path / "results" / "x")
    assert root == tmp_path.resolve()
    assert portable(tmp_path / "results" / "x", root) == "results/x" and portable("runs/y", root) == "runs/y"
    assert scrub(f"--out {tmp_path}/results/x and /opt/data/h.csv", root) == "--out results/x and …/h.csv"


def test_accuracy_figure_has_a_zoom_panel_on_the_last_third(fake_report):
    from redr.experiments.report.figures import accuracy_figure
    from redr.experiments.results import load_runs
    from redr.experiments.report.runset import group

    runs = [r for r in load_runs(fake_report) if r.status == "done" and r.is_grid_run]
    groups = group(runs, lambda r: (r.algorithm, r.density if r.model == "sparse" else None))
    fig = accuracy_figure({k: v for k, v in groups.items() if k[1] in (0.1, None)}, [0.1], "synthetic")
    assert len(fig.axes) == 2
    full, zoom = fig.axes
    assert zoom.get_xlim() == (2, 3)  # epochs 2-3 of 3
    dynamic = [100 * r.rows[-1]["test_acc"] for r in runs if r.algorithm not in ("none",) and r.model == "sparse"
               and r.density == 0.1]
    low, high = zoom.get_ylim()
    assert low <= min(dynamic) and high >= max(dynamic) and high - low < full.get_ylim()[1] - full.get_ylim()[0]
    assert (fake_report / "figures/accuracy_synthetic.png").stat().st_size > 0
