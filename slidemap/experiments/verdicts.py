"""From paired runs to a verdict: the statistics of the report's conclusions, in the words the report uses.

- the unit is a run: its test areas' counts pooled (or one test site's, where a claim is about sites), never
  one test area of a run, so that a run tested on many areas counts once;
- an ensemble of a grid point's seeds (``predict.ensemble``) is no run and never enters a test;
- two runs pair when they differ in the tested factor and in nothing else: every other axis, the seed, the
  training settings, the precision and the device are equal. A run without such a partner is left out and
  counted; one whose only would-be partner differs in precision or device as well is counted apart;
- a pair whose difference is zero (a tie) is dropped before the test and counted ("4 of 16 pairs differ");
- the test is Wilcoxon's signed-rank test on the pairs that differ, one-sided where the claim has a direction:
  exact (scipy's ``method="exact"``) when no two differences tie in size, exact over all 2^n sign changes
  (scipy's ``PermutationMethod``) when some do and n <= ``EXHAUSTIVE_PAIRS``, else the tie-corrected normal
  approximation, and the report says which;
- a verdict needs at least ``MIN_PAIRS`` pairs that differ; with fewer it says "too few pairs";
- the p-values of one report's claims are adjusted together by Holm's step-down method, and a verdict rests
  on the adjusted p at ``ALPHA``;
- beside p, the mean paired difference (ties included) with a 95 % percentile bootstrap interval over the
  pairs (``BOOTSTRAP`` resamples, seeded by the claim, so a report is the same on every rerun).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from slidemap.experiments.analysis import DERIVED, FACTORS, RUN_DEVICE, RUN_PRECISION, single_runs

ALPHA = 0.05
MIN_PAIRS = 6
EXHAUSTIVE_PAIRS = 16
BOOTSTRAP = 10_000
STUDIES = {"000": "Soares et al. 2020", "002": "Ghorbanzadeh et al. 2021"}

Alternative = Literal["greater", "two-sided"]


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: a - b over the pairs, the test on those that differ, and the mean's interval.

    ``n``: pairs; ``used``: pairs the test used (ties dropped); ``p``: None with fewer than ``MIN_PAIRS`` used;
    ``unpaired``: units left without a partner; ``refused``: of those, the ones whose only would-be partner differs
    in precision or device as well.
    """

    label: str
    n: int
    used: int
    p: float | None
    method: str
    mean: float | None = None
    low: float | None = None
    high: float | None = None
    unpaired: int = 0
    refused: int = 0
    alternative: Alternative = "greater"
    detail: str = ""

    def sentence(self) -> str:
        """The numbers of this comparison in words."""
        if self.n == 0:
            return f"{self.label}: no pairs"
        parts = [self.detail or f"{self.used} of {self.n} pairs differ"]
        if self.mean is not None and self.low is not None:
            parts.append(f"mean difference {self.mean:+.3f} (95 % bootstrap interval {self.low:+.3f} to "
                         f"{self.high:+.3f})")
        elif self.mean is not None:
            parts.append(f"mean difference {self.mean:+.3f} (no interval from fewer than {MIN_PAIRS} pairs)")
        if self.p is not None:
            side = "one-sided" if self.alternative == "greater" else "two-sided"
            parts.append(f"{self.method}, {side} p = {self.p:.3g}")
        else:
            parts.append(f"too few pairs (a verdict needs {MIN_PAIRS} that differ; more seeds give more pairs)")
        if self.unpaired:
            parts.append(f"{self.unpaired} unit(s) without a partner differing only in this" +
                         (f", {self.refused} of them because their partner ran at another precision or on another "
                          f"device" if self.refused else ""))
        return f"{self.label}: " + "; ".join(parts)


def bootstrap_interval(d: np.ndarray, seed: int, resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """The 95 % percentile bootstrap interval of the mean of ``d`` (resampling pairs with replacement)."""
    if d.size == 1:
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // d.size)  # resamples drawn in chunks of about 2 million values
    for start in range(0, resamples, step):
        k = min(step, resamples - start)
        means[start:start + k] = d[rng.integers(0, d.size, size=(k, d.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def signed_rank(d: np.ndarray, alternative: Alternative) -> tuple[float, str]:
    """Wilcoxon's signed-rank p of non-zero differences ``d`` and how it was computed.

    Each tail is asked of scipy as a lower tail ("less"; the upper tail of ``d`` is the lower tail of ``-d``):
    scipy's upper tails are one minus a sum and lose everything below about 1e-16 (2^-60 came back as 0).
    """
    from scipy import stats

    method: Any
    if np.unique(np.abs(d)).size == d.size:
        method, how = "exact", "exact signed-rank test"
    elif d.size <= EXHAUSTIVE_PAIRS:
        method, how = stats.PermutationMethod(n_resamples=np.inf), \
            "exact signed-rank test (tied differences: all sign changes)"
    else:
        method, how = "asymptotic", "signed-rank test, tie-corrected normal approximation"
    upper = float(stats.wilcoxon(-d, alternative="less", method=method).pvalue)
    if alternative == "greater":
        return upper, how
    lower = float(stats.wilcoxon(d, alternative="less", method=method).pvalue)
    return min(1.0, 2 * min(upper, lower)), how


def compare(label: str, diffs: Sequence[float], alternative: Alternative = "greater", seed_text: str = "",
            unpaired: int = 0, refused: int = 0) -> Comparison:
    """Test paired differences (a - b).

    Ties dropped and counted, the signed-rank p with enough pairs, the mean's bootstrap interval seeded by
    ``seed_text`` and ``label``.
    """
    d = np.round(np.asarray(diffs, dtype=float), 12)  # float noise is no difference
    nonzero = d[d != 0]
    if d.size == 0:
        return Comparison(label, 0, 0, None, "", unpaired=unpaired, refused=refused, alternative=alternative)
    p, method = signed_rank(nonzero, alternative) if nonzero.size >= MIN_PAIRS else (None, "")
    low, high = bootstrap_interval(d, zlib.crc32(f"{seed_text}|{label}".encode())) if d.size >= MIN_PAIRS \
        else (None, None)  # a resampling of a handful of pairs says nothing
    return Comparison(label, int(d.size), int(nonzero.size), p, method, float(d.mean()), low, high, unpaired,
                      refused, alternative)


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None stays None and does not count among the tests)."""
    tested = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


Kind = Literal["better", "not better", "no difference"]


@dataclass(frozen=True)
class Claim:
    """One conclusion a study drew, in its words, and how this grid tests it.

    ``kind``: "better" (a directional claim: one-sided test, supported when significant), "not better" (A does
    not beat B: one-sided test of A beating B, contradicted when significant) or "no difference" (two-sided,
    contradicted when significant). Several comparisons combine as "all" (every one must hold: the largest p,
    an intersection-union test) or "any" (Bonferroni's bound on the smallest p).
    """

    study: str
    quote: str
    where: str
    test: str
    kind: Kind = "better"
    part: str = ""  # which part of a quoted conclusion this claim tests, in this report's words
    comparisons: tuple[Comparison, ...] = ()
    combine: Literal["all", "any"] = "all"
    why_not: str = ""
    p_holm: float | None = None

    @property
    def p(self) -> float | None:
        """The claim's p before Holm's correction (None: not tested, or too few pairs)."""
        if self.why_not or not self.comparisons or any(c.p is None for c in self.comparisons):
            return None
        ps = [cast(float, c.p) for c in self.comparisons]
        return max(ps) if self.combine == "all" else min(1.0, len(ps) * min(ps))

    @property
    def verdict(self) -> str:
        """Supported / not supported (or contradicted / not contradicted), too few pairs, or why not testable."""
        if self.why_not:
            return f"cannot be tested here: {self.why_not}"
        if self.p is None:
            return "too few pairs"
        significant = self.p_holm is not None and self.p_holm < ALPHA
        if self.kind == "better":
            return "supported" if significant else "not supported"
        return "contradicted" if significant else "not contradicted"

    def sentence(self) -> str:
        """The claim, its verdict and the numbers behind it, as the report prints them."""
        word, _, why = self.verdict.partition(": ")
        part = f" ({self.part})" if self.part else ""
        head = f"Study {self.study} ({STUDIES[self.study]}, {self.where}): \"{self.quote}\"{part} — " + \
            word.upper() + (f": {why}" if why else "")
        if self.why_not:
            return head + "."
        side = {"better": "one-sided, in the claimed direction", "not better": "one-sided, against the claim",
                "no difference": "two-sided"}[self.kind]
        out = f"{head}. Test: {self.test} ({side}). " + "; ".join(c.sentence() for c in self.comparisons)
        if self.p is not None and len(self.comparisons) > 1:
            rule = "the largest p, as every comparison must hold" if self.combine == "all" else \
                f"the smallest p times {len(self.comparisons)} (Bonferroni)"
            out += f". Claim p = {self.p:.3g} ({rule})"
        if self.p_holm is not None:
            out += f"; Holm-adjusted p = {self.p_holm:.3g}"
        if self.against:
            out += "; the mean difference goes the other way"
        return out + "."

    @property
    def against(self) -> bool:
        """A directional claim, not supported, whose every mean difference goes the other way.

        A description, not a test: the test was one-sided in the claimed direction.
        """
        return self.kind == "better" and self.verdict == "not supported" and \
            all(c.mean is not None and c.mean < 0 for c in self.comparisons)


def with_holm(claims: Sequence[Claim]) -> list[Claim]:
    """The claims with their Holm-adjusted p-values (all tested claims of one report form the family)."""
    adjusted = holm([c.p for c in claims])
    return [replace(c, p_holm=a) for c, a in zip(claims, adjusted, strict=True)]


def match_keys(frame: pd.DataFrame, tested: Sequence[str]) -> list[str]:
    """The factor columns two units must share when they differ in ``tested`` (and what follows from it)."""
    out = set(tested)
    for t in tested:
        out.update(DERIVED.get(t, ()))
    return [c for c in (*FACTORS, "test_site", "test_area", "_group") if c in frame.columns and c not in out]


def key_of(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each row's values of ``keys`` as one string: the identity two paired units share."""
    return frame[keys].map(str).agg("|".join, axis=1) if keys else pd.Series("", index=frame.index)


def paired(units: pd.DataFrame, factor: str, a: object, b: object, metric: str, label: str,
           alternative: Alternative = "greater", seed_text: str = "", free: Sequence[str] = ()) -> Comparison:
    """Compare ``metric`` at ``factor == a`` with ``b`` on units equal in every other factor.

    ``free`` factors aside; the differences are ``metric(a) - metric(b)``. An ensemble is no run: its units are
    left out.
    """
    units = single_runs(units)
    keys = match_keys(units, [factor, *free])
    left, right = units[units[factor] == a], units[units[factor] == b]
    ka, kb = key_of(left, keys), key_of(right, keys)
    sa = pd.Series(left[metric].to_numpy(float), index=ka.to_numpy())
    sb = pd.Series(right[metric].to_numpy(float), index=kb.to_numpy())
    sa, sb = sa[~sa.index.duplicated(keep=False)], sb[~sb.index.duplicated(keep=False)]  # ambiguous: no pair
    common = sorted(set(sa.index) & set(sb.index))
    unpaired = len(left) + len(right) - 2 * len(common)
    loose = [k for k in keys if k not in (RUN_PRECISION, RUN_DEVICE)]
    la, lb = key_of(left, loose), key_of(right, loose)
    lone_a = la[~ka.isin(common).to_numpy()]
    lone_b = lb[~kb.isin(common).to_numpy()]
    refused = int(lone_a.isin(set(lb)).sum() + lone_b.isin(set(la)).sum())
    diffs = [sa[k] - sb[k] for k in common]
    return compare(label, diffs, alternative, seed_text, unpaired, refused)


def between(label: str, triples: Sequence[tuple[float, float, float]]) -> Comparison:
    """Does the middle value lie between the outer two, more often than the 1 in 3 of chance?

    ``triples``: (low level, middle level, high level) of matched units. A triple with two equal values is a
    tie and dropped; the test is an exact one-sided binomial test against 1/3 (under no effect, any of the
    three is the middle one with equal chance).
    """
    from scipy import stats

    t = np.round(np.asarray(triples, dtype=float).reshape(-1, 3), 12)
    distinct = np.array([len(set(x)) == 3 for x in t], dtype=bool)
    inside = [(min(x[0], x[2]) < x[1] < max(x[0], x[2])) for x in t[distinct]]
    k, used = int(sum(inside)), int(distinct.sum())
    p = float(stats.binomtest(k, used, 1 / 3, alternative="greater").pvalue) if used >= MIN_PAIRS else None
    return Comparison(label, len(t), used, p, "exact binomial test against 1/3", detail=(
        f"{used} of {len(t)} matched triples without ties, the middle one between the others in {k}"))
