"""``redr reproduce growth``: its cells, the equivalence statistics, and the report section on a tiny grid."""
from __future__ import annotations

import csv
import math

import pytest
import torch

from redr.cli import main
from redr.errors import UsageError
from redr.experiments.growth import ALGORITHMS, WIDTHS, growth_cells
from redr.experiments.report.growth import DIFFER, EQUIVALENT, NO_DIFFERENCE, NOT_TESTED
from redr.experiments.report.stats import equivalence_test, paired_test, t_quantile, welch_test


def test_cells_pair_exact_and_sampled_runs_that_differ_only_in_the_growth_path():
    cells = growth_cells()
    assert len(cells) == len(ALGORITHMS) * 2 * 3 * len(WIDTHS)
    assert len({c.name for c in cells}) == len(cells)
    by_name = {c.name: c.options for c in cells}
    for name, options in by_name.items():
        if options["algorithm_options"]["growth"] == "exact":
            twin = next(o for o in by_name.values() if o["algorithm_options"]["growth"] == "sampled"
                        and {k: v for k, v in o.items() if k != "algorithm_options"}
                        == {k: v for k, v in options.items() if k != "algorithm_options"})
            assert twin["algorithm_options"]["candidates"] >= 1
    wide = [c for c in cells if c.options["hidden"] == [4096, 4096]]
    assert wide and all(c.options["epochs"] == WIDTHS[4096].epochs for c in wide)
    assert {c.options["algorithm"] for c in growth_cells(models=["loss"], widths=[256])} == {"loss"}
    halves = [growth_cells(paths=[p]) for p in ("exact", "sampled")]
    assert sorted(c.name for c in halves[0] + halves[1]) == sorted(by_name)


@pytest.mark.parametrize("kwargs, message", [({"models": ["random"]}, "not part of the growth"),
                                             ({"densities": [0.1, 0.2]}, "one density"),
                                             ({"widths": [0]}, "positive"), ({"seeds": 0}, "--seeds"),
                                             ({"paths": ["dense"]}, "--paths")])
def test_bad_choices_are_refused(kwargs, message):
    with pytest.raises(UsageError, match=message):
        growth_cells(**kwargs)


def test_t_quantile_matches_the_printed_tables():
    for q, df, expected in ((0.975, 2, 4.302653), (0.975, 4, 2.776445), (0.95, 10, 1.812461), (0.025, 2, -4.302653)):
        assert t_quantile(q, df) == pytest.approx(expected, abs=1e-5)


def test_confidence_interval_ends_are_where_welch_p_is_the_level():
    a, b = [0.851, 0.857, 0.862], [0.845, 0.853, 0.850, 0.849]
    result = equivalence_test(a, b, margin=0.005)
    assert result.low < result.welch.estimate < result.high
    for end in (result.low, result.high):  # shifting the difference to an end of the 95% interval: p = 0.05
        assert welch_test(a, b, shift=-end).p == pytest.approx(0.05, abs=1e-6)


def test_paired_test_is_the_one_sample_t_of_the_differences():
    a, b = [0.8741, 0.8800, 0.8776], [0.8695, 0.8759, 0.8761]
    result, low, high = paired_test(a, b)
    d = [0.0046, 0.0041, 0.0015]  # by hand: mean, sd, t with 2 degrees of freedom
    m = sum(d) / 3
    se = math.sqrt(sum((x - m) ** 2 for x in d) / 2 / 3)
    assert result.estimate == pytest.approx(m) and result.df == pytest.approx(2)
    assert result.t == pytest.approx(m / se)
    assert (low, high) == pytest.approx((m - 4.302653 * se, m + 4.302653 * se), abs=1e-7)
    assert math.isnan(paired_test([0.9], [0.8])[0].p)


def test_tost_tells_equivalent_from_unresolved():
    tight = equivalence_test([0.850, 0.851, 0.852], [0.851, 0.852, 0.850], margin=0.005)
    assert tight.p_tost < 0.05 and -0.005 < tight.low and tight.high < 0.005
    loose = equivalence_test([0.84, 0.86, 0.85], [0.83, 0.87, 0.85], margin=0.005)
    assert loose.p_tost > 0.05 and loose.welch.p > 0.05
    far = equivalence_test([0.90, 0.901, 0.902], [0.85, 0.851, 0.852], margin=0.005)
    assert far.welch.p < 0.05 and far.p_tost > 0.5
    assert math.isnan(equivalence_test([0.9], [0.8, 0.81], margin=0.005).p_tost)


def test_tiny_growth_grid_writes_its_report(tmp_path):
    out = tmp_path / "growth"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["reproduce", "growth", "--dataset", "synthetic", "--widths", "16", "--densities", "0.5",
                     "--algorithms", "gradient-global", "--seeds", "2", "--epochs", "2", "--no-progress", "--quiet",
                     "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    with open(out / "tables" / "growth.csv") as fh:
        records = list(csv.DictReader(fh))
    assert len(records) == 1
    record = records[0]
    assert (record["hidden"], record["algorithm"], record["seeds_exact"], record["seeds_sampled"]) == \
        ("16-16", "gradient-global", "2", "2")
    assert record["verdict"] in (DIFFER, EQUIVALENT, NO_DIFFERENCE, NOT_TESTED) and record["pairs"] == "2"
    difference = float(record["sampled_mean"]) - float(record["exact_mean"])
    assert float(record["difference"]) == pytest.approx(difference)
    report = (out / "report.md").read_text()
    assert record["net"].split("-")[1:3] == ["16", "16"]
    assert "Redr-Gradient-Global" in report.split("Sampled vs exact growth")[1]


def test_widths_and_quick_are_refused_where_they_do_not_apply(tmp_path, capsys):
    assert main(["reproduce", "synthetic", "--widths", "16", "--out", str(tmp_path / "a")]) == 2
    assert "growth and scale experiments only" in capsys.readouterr().err
    assert main(["reproduce", "growth", "--quick", "--out", str(tmp_path / "b")]) == 2
    assert "--quick does not apply" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
