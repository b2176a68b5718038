"""The numbers behind the comparison report, apart from how they are shown: the interval of a mean accuracy, the
difference of two arms (paired over shared seeds, or Welch's unpaired test), Holm's correction, the smallest
difference the runs could detect, and the words each result earns.

Accuracies are fractions in [0, 1] and differences of them lie in [-1, 1]: an interval reaching outside says
that the seeds are too few to bound the quantity, and is returned as None rather than as impossible bounds.
"""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import optimize, stats

CONFIDENCE_LEVEL = 0.95
SIGNIFICANCE_LEVEL = 0.05
POWER = 0.8
# The equivalence margin declared before the runs (compare --margin, in points): the effects in question are
# about 1 point (the reference notebook's +1 to +2, the papers' +0.5 to +1.5), so half a point is "the same".
EQUIVALENCE_MARGIN = 0.005
# The effect --plan sizes a study for by default (compare --plan, in points).
PLANNED_EFFECT = 0.003
PAIRED, WELCH = "paired t", "Welch t"
ACCURACY_BOUNDS, DIFFERENCE_BOUNDS = (0.0, 1.0), (-1.0, 1.0)

Interval = Optional[Tuple[float, float]]


def mean_and_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Sample standard deviation (ddof=1); None for a single value."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None


def bounded(low: float, high: float, bounds: Tuple[float, float]) -> Interval:
    return (low, high) if bounds[0] <= low and high <= bounds[1] else None


def width_ratio(interval: Interval, reference: Interval) -> Optional[float]:
    """interval's width over reference's: for a paired CI next to Welch's on the same runs, what pairing bought."""
    if not interval or not reference or reference[1] == reference[0]:
        return None
    return (interval[1] - interval[0]) / (reference[1] - reference[0])


def t_interval(mean: float, standard_error: float, df: float, bounds: Tuple[float, float]) -> Interval:
    half_width = stats.t.ppf((1 + CONFIDENCE_LEVEL) / 2, df) * standard_error
    return bounded(mean - half_width, mean + half_width, bounds)


def mean_interval(values: Sequence[float]) -> Interval:
    """Student-t 95% interval of a mean accuracy; None with fewer than two values or outside [0, 1]."""
    if len(values) < 2:
        return None
    mean, std = mean_and_std(values)
    return t_interval(mean, std / math.sqrt(len(values)), len(values) - 1, ACCURACY_BOUNDS)


def two_sided_power(noncentrality: float, df: float, alpha: float) -> float:
    """P(|T| > t_(1 - alpha/2, df)) for T ~ noncentral t(df, noncentrality)."""
    critical = stats.t.ppf(1 - alpha / 2, df)
    # The lower tail P(T < -t_crit) as sf at -lambda, by symmetry: nct.cdf returns NaN far out in that tail.
    return float(stats.nct.sf(critical, df, noncentrality) + stats.nct.sf(critical, df, -noncentrality))


def min_detectable_difference(standard_error: float, df: float, alpha: float = SIGNIFICANCE_LEVEL) -> float:
    """The true |difference| that a two-sided t-test at level `alpha` finds with probability 0.8, given these
    runs' standard error and degrees of freedom: lambda * SE, where lambda solves
    P(|T| > t_crit) = 0.8 for T ~ noncentral t(df, lambda) and t_crit = t_(1 - alpha/2, df)."""

    def power_gap(noncentrality: float) -> float:
        return two_sided_power(noncentrality, df, alpha) - POWER

    upper = stats.t.ppf(1 - alpha / 2, df) + 1.0
    while power_gap(upper) < 0:
        upper *= 2
    return optimize.brentq(power_gap, 0.0, upper) * standard_error


@dataclass(frozen=True)
class Difference:
    """mean = variant - reference, with its standard error and degrees of freedom under `test`."""
    test: str
    mean: float
    standard_error: float
    df: float
    runs: str  # what each side contributed, e.g. "3 pairs" or "3 + 2" runs
    per_seed: Dict[int, float] = field(default_factory=dict)  # paired only: seed -> difference
    arm_sizes: Tuple[int, int] = (0, 0)  # runs in each arm (pairs in each, for a paired test)

    @property
    def interval(self) -> Interval:
        """None where the runs show no spread at all: a t interval of width 0 would claim certainty."""
        if self.standard_error == 0:
            return None
        return t_interval(self.mean, self.standard_error, self.df, DIFFERENCE_BOUNDS)

    @property
    def exact_tail(self) -> float:
        """Where the runs show no spread at all, t is undefined; accuracies are counts of images, so equal
        differences on every seed do happen (-2 images of 2,048 on each of 3 seeds: t is infinite, and no three
        seeds show that). The exact randomization test's one-sided p for such runs instead: one sign assignment
        of the 2^n for n equal per-seed differences (sign-flip test), one labelling of the C(n + m, n) for two
        arms of n and m equal runs each (permutation test)."""
        if self.test == PAIRED:
            return 0.5 ** len(self.per_seed)
        return 1 / math.comb(sum(self.arm_sizes), self.arm_sizes[0])

    @property
    def p_value(self) -> float:
        """Two-sided; with no spread at all, 1 for a zero difference (nothing to find) and otherwise the exact
        randomization test's (exact_tail): both tails for a paired test or arms of equal size, one otherwise."""
        if self.standard_error == 0:
            if self.mean == 0:
                return 1.0
            both_tails = self.test == PAIRED or self.arm_sizes[0] == self.arm_sizes[1]
            return min(1.0, (2 if both_tails else 1) * self.exact_tail)
        return float(2 * stats.t.sf(abs(self.mean / self.standard_error), self.df))

    @property
    def min_detectable(self) -> Optional[float]:
        """None where the runs show no spread: a t-test's power says nothing then (p_value)."""
        return min_detectable_difference(self.standard_error, self.df) if self.standard_error else None

    def equivalence_p_value(self, margin: float) -> float:
        """Two one-sided tests (TOST) of H0: |difference| >= margin: the larger of the two one-sided p-values,
        p(difference <= -margin) from t = (mean + margin) / SE and p(difference >= margin) from
        t = (mean - margin) / SE. Small only when the difference is shown to lie inside (-margin, margin)."""
        if self.standard_error == 0:  # each one-sided test as the exact randomization test (exact_tail)
            return self.exact_tail if abs(self.mean) < margin else 1.0
        below = stats.t.sf((self.mean + margin) / self.standard_error, self.df)
        above = stats.t.cdf((self.mean - margin) / self.standard_error, self.df)
        return float(max(below, above))


def paired_difference(values: Dict[int, float], reference: Dict[int, float]) -> Optional[Difference]:
    """Paired t over the seeds both arms ran: the per-seed differences share the seed's initial weights and
    batches, so most seed noise cancels. None with fewer than two shared seeds."""
    seeds = sorted(values.keys() & reference.keys())
    if len(seeds) < 2:
        return None
    per_seed = {seed: values[seed] - reference[seed] for seed in seeds}
    mean, std = mean_and_std(list(per_seed.values()))
    return Difference(PAIRED, mean, std / math.sqrt(len(seeds)), len(seeds) - 1, f"{len(seeds)} pairs", per_seed,
                      (len(seeds), len(seeds)))


def welch_difference(values: Sequence[float], reference: Sequence[float]) -> Optional[Difference]:
    """Welch's unpaired t (unequal variances, Welch-Satterthwaite degrees of freedom); None when either arm
    has fewer than two runs."""
    if len(values) < 2 or len(reference) < 2:
        return None
    variances = [np.var(arm, ddof=1) / len(arm) for arm in (values, reference)]
    total = sum(variances)
    denominator = sum(variance ** 2 / (len(arm) - 1) for variance, arm in zip(variances, (values, reference)))
    df = total ** 2 / denominator if denominator else len(values) + len(reference) - 2
    return Difference(WELCH, float(np.mean(values) - np.mean(reference)), math.sqrt(total), df,
                      f"{len(values)} + {len(reference)}", arm_sizes=(len(values), len(reference)))


def holm_adjusted(p_values: Sequence[float]) -> List[float]:
    """Holm's step-down adjustment over one family of comparisons: the k-th smallest p is multiplied by
    (m - k + 1), and adjusted values never decrease along that order (capped at 1)."""
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(np.argsort(p_values, kind="stable")):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def holm_levels(p_values: Sequence[float]) -> List[float]:
    """The level each comparison is tested at in Holm's step-down procedure: alpha / (m - k + 1) for the k-th
    smallest p (its detectable difference at that level is what its verdict could have found)."""
    levels = [0.0] * len(p_values)
    for rank, index in enumerate(np.argsort(p_values, kind="stable")):
        levels[index] = SIGNIFICANCE_LEVEL / (len(p_values) - rank)
    return levels


def verdict(difference: Optional[Difference], adjusted_p: Optional[float], reference: str,
            equivalence_adjusted_p: Optional[float] = None, margin: float = EQUIVALENCE_MARGIN) -> str:
    """Words that follow the numbers: 'higher'/'lower' when the difference test is significant after Holm;
    'equivalent within ±margin' only when TOST against the margin declared before the runs rejects after Holm
    over the report's equivalence tests (`equivalence_adjusted_p`); 'higher'/'lower' 'before Holm's correction
    only' when the 95% CI excludes 0 but the adjusted p does not; anything else is inconclusive, never 'no
    difference'."""
    if difference is None:
        return "n/a, too few seeds"
    direction = f"{'higher' if difference.mean > 0 else 'lower'} than {reference}"
    if adjusted_p < SIGNIFICANCE_LEVEL:
        return direction
    if equivalence_adjusted_p is not None and equivalence_adjusted_p < SIGNIFICANCE_LEVEL:
        return f"equivalent within ±{100 * margin:g} pp"
    if difference.p_value < SIGNIFICANCE_LEVEL:
        return f"{direction} before Holm's correction only"
    return "inconclusive (not significant)"


def sd_upper_bound(sd: float, df: float, confidence: float = POWER) -> float:
    """One-sided upper confidence bound of a standard deviation estimated with df degrees of freedom
    (chi-square): the spread a plan should allow for, since a few pilot seeds can underestimate it."""
    return sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df))


def seeds_to_detect(paired_sd: float, effect: float, alpha: float, most: int = 1000) -> Optional[int]:
    """The fewest paired seeds n (>= 2) at which a two-sided paired t-test at level `alpha` finds a true
    difference `effect` with probability 0.8, for per-seed differences of spread `paired_sd`; None beyond
    `most`. With no spread the t-test is undefined (Difference.p_value): the seeds at which the exact sign-flip
    test's smallest two-sided p, 2^(1-n), falls below `alpha`."""
    if paired_sd == 0:
        return max(2, math.floor(1 - math.log2(alpha)) + 1)
    for seeds in range(2, most + 1):
        if two_sided_power(effect * math.sqrt(seeds) / paired_sd, seeds - 1, alpha) >= POWER:
            return seeds
    return None


def tost_power(paired_sd: float, seeds: int, margin: float, alpha: float, true_difference: float = 0.0) -> float:
    """P(TOST rejects |difference| >= margin at level alpha) with `seeds` pairs: P(T1 > t_crit) + P(T2 < -t_crit)
    - 1 for the two one-sided statistics, noncentral t each (a lower bound, exact as the spread estimate
    settles)."""
    df, standard_error = seeds - 1, paired_sd / math.sqrt(seeds)
    critical = stats.t.ppf(1 - alpha, df)
    upper = stats.nct.sf(critical, df, (true_difference + margin) / standard_error)
    lower = stats.nct.sf(critical, df, (margin - true_difference) / standard_error)
    return float(max(0.0, upper + lower - 1))


def seeds_for_equivalence(paired_sd: float, margin: float, alpha: float, most: int = 1000) -> Optional[int]:
    """The fewest paired seeds at which TOST shows equivalence within `margin` with probability 0.8 when the
    true difference is 0; None beyond `most`. With no spread, the seeds at which each exact one-sided sign-flip
    test's p, 2^-n, falls below `alpha` (Difference.equivalence_p_value)."""
    if paired_sd == 0:
        return max(2, math.floor(-math.log2(alpha)) + 1)
    for seeds in range(2, most + 1):
        if tost_power(paired_sd, seeds, margin, alpha) >= POWER:
            return seeds
    return None
