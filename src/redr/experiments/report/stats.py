"""Welch's t-test over seeds, written with :mod:`math` only (scipy is not a dependency).

A claim compares configurations trained with a few seeds each; their means alone cannot say whether a
difference is more than seed noise. Welch's test does not assume equal variances (a sparse net's spread
over seeds need not be a dense net's). :func:`contrast_test` generalises it from a difference of two means
to any linear combination of group means (the global - local gap at one density minus the gap at
another), with the Welch-Satterthwaite degrees of freedom.

The two-sided p-value of Student's t with ``df`` degrees of freedom is the regularized incomplete beta
function ``I_x(df/2, 1/2)`` at ``x = df / (df + t^2)``, computed with its continued fraction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 10_000


@dataclass(frozen=True)
class TestResult:
    """``estimate``: the contrast's value from the sample means; ``p``: its two-sided p-value (nan: untestable)."""

    estimate: float
    t: float
    df: float
    p: float

    __test__ = False  # not a pytest test class


def _beta_continued_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz); converges fast for x < (a + 1) / (a + b + 2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    value = d
    for m in range(1, _MAX_TERMS):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),  # the even step d_2m
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):  # the odd step d_2m+1
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            value *= c * d
        if abs(c * d - 1.0) < _EPS:
            return value
    raise ArithmeticError(f"incomplete beta I_{x}({a}, {b}): continued fraction did not converge")


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for 0 <= x <= 1 and a, b > 0."""
    if not 0.0 <= x <= 1.0 or a <= 0 or b <= 0:
        raise ValueError(f"regularized_beta needs 0 <= x <= 1 and a, b > 0, got x={x}, a={a}, b={b}")
    if x in (0.0, 1.0):
        return x
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(1.0 - x, b, a) / b  # I_x(a,b) = 1 - I_1-x(b,a)


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` > 0 degrees of freedom (df need not be an integer)."""
    if math.isnan(t) or math.isnan(df):
        return math.nan
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2.0
    return 1.0 - tail if t > 0 else tail


def _clean(values: Sequence[float]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v)]


def contrast_test(terms: Sequence[tuple[float, Sequence[float]]], shift: float = 0.0) -> TestResult:
    """Test whether ``sum(c * mean(values) for c, values in terms) + shift`` differs from 0.

    Each group's variance is its own (sample variance, n - 1); the standard error is
    sqrt(sum c^2 s^2 / n) and the degrees of freedom Welch-Satterthwaite's. A group with fewer than two
    values makes the test impossible (p = nan). With no spread at all the estimate is exact: p = 0 unless
    it is 0 (p = 1).
    """
    groups = [(c, _clean(values)) for c, values in terms if c != 0]
    if not groups or any(len(v) == 0 for _, v in groups):
        return TestResult(math.nan, math.nan, math.nan, math.nan)
    estimate = sum(c * sum(v) / len(v) for c, v in groups) + shift
    if any(len(v) < 2 for _, v in groups):
        return TestResult(estimate, math.nan, math.nan, math.nan)
    parts = []  # c^2 s^2 / n per group, and n - 1
    for c, v in groups:
        m = sum(v) / len(v)
        parts.append((c * c * sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v), len(v) - 1))
    variance = sum(u for u, _ in parts)
    if variance <= 0.0:
        exact = 0.0 if estimate != 0 else 1.0
        return TestResult(estimate, math.copysign(math.inf, estimate) if estimate else 0.0, math.inf, exact)
    df = variance ** 2 / sum(u * u / k for u, k in parts if u > 0)
    t = estimate / math.sqrt(variance)
    return TestResult(estimate, t, df, t_two_sided_p(t, df))


def welch_test(a: Sequence[float], b: Sequence[float], shift: float = 0.0) -> TestResult:
    """Welch's two-sample t-test of mean(a) - mean(b) + shift against 0."""
    return contrast_test([(1.0, a), (-1.0, b)], shift)


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`)."""
    if not 0.0 < q < 1.0 or math.isnan(df) or df <= 0:
        raise ValueError(f"t_quantile needs 0 < q < 1 and df > 0, got q={q}, df={df}")
    if math.isinf(df):
        df = 1e12
    low, high = -1.0, 1.0
    while t_cdf(low, df) > q:
        low *= 2.0
    while t_cdf(high, df) < q:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < q:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, abs(middle)):
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class Equivalence:
    """mean(a) - mean(b) with its Welch confidence interval and two one-sided tests (TOST) at +-``margin``.

    ``p_tost`` < level says the difference lies within the margin (equivalence, the 1 - 2 level interval
    inside it); ``welch`` tests it against 0 (a difference).
    """

    welch: TestResult
    low: float
    high: float
    margin: float
    p_tost: float

    __test__ = False


def equivalence_test(a: Sequence[float], b: Sequence[float], margin: float, level: float = 0.05) -> Equivalence:
    """Welch's test, the two-sided ``1 - level`` interval of mean(a) - mean(b), and TOST at +-``margin``."""
    welch = welch_test(a, b)
    a, b = _clean(a), _clean(b)
    if math.isnan(welch.p):
        return Equivalence(welch, math.nan, math.nan, margin, math.nan)
    if math.isinf(welch.df):  # no spread: the difference is exact
        inside = abs(welch.estimate) < margin
        return Equivalence(welch, welch.estimate, welch.estimate, margin, 0.0 if inside else 1.0)
    se = math.sqrt(sum(sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1) / len(v) for v in (a, b)))
    half = t_quantile(1.0 - level / 2.0, welch.df) * se
    p_low = 1.0 - t_cdf((welch.estimate + margin) / se, welch.df)  # H0: difference <= -margin
    p_high = t_cdf((welch.estimate - margin) / se, welch.df)  # H0: difference >= +margin
    return Equivalence(welch, welch.estimate - half, welch.estimate + half, margin, max(p_low, p_high))


def paired_test(a: Sequence[float], b: Sequence[float], level: float = 0.05) -> tuple[TestResult, float, float]:
    """The one-sample t-test of the pairs' differences ``a[i] - b[i]`` (runs that share a seed) and its
    two-sided ``1 - level`` interval: ``(result, low, high)``; nan where fewer than two pairs."""
    differences = [x - y for x, y in zip(_clean(a), _clean(b))]
    result = contrast_test([(1.0, differences)])
    if math.isnan(result.p) or math.isinf(result.df):
        exact = result.estimate if math.isinf(result.df) else math.nan
        return result, exact, exact
    n = len(differences)
    se = math.sqrt(sum((x - result.estimate) ** 2 for x in differences) / (n - 1) / n)
    half = t_quantile(1.0 - level / 2.0, result.df) * se
    return result, result.estimate - half, result.estimate + half
