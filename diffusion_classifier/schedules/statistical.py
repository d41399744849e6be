"""A statistically adaptive schedule: prune candidates by paired differences of their errors.

Every candidate is scored on the same (t, ε), so for candidates a and the current leader b the
per-sample differences d = err_a - err_b are paired and their mean has standard error sd(d)/sqrt(n).
A candidate is dropped once mean(d) > z·se; timesteps come in a stratified order so that every prefix
covers [0, T) evenly; evaluation stops when one candidate remains or `max_samples` timesteps are spent.

With a fixed z the same hypothesis is tested again at every look, so the chance of ever dropping the
best class grows with the number of looks and is not stated. Given `delta`, the anytime-valid rule
replaces z by a threshold that spends delta over every (look, candidate) pair (Bonferroni): the looks
happen after min_samples, min_samples+step, ... up to max_samples timesteps, a number L known before
the first sample, and a candidate is dropped at a look with n samples once its paired t statistic
against the leader exceeds the Student-t quantile t_{n-1}(1 - delta / (L (K - 1))).

What this guarantees: let b be the class with the lowest expected (weighted) error, expectation over
(t, ε) drawn independently. b is dropped only if at some look its t statistic against some other class
j (the leader then) exceeds the threshold although E[e_b - e_j] <= 0; each of these L (K - 1) events has
probability at most delta / (L (K - 1)) when the t statistic of the paired differences follows its
Student-t law (exact for normal differences, asymptotic by the central limit theorem otherwise), so
P(b is ever dropped) <= delta, however the looks turn out and whatever the other classes do.
What it does not guarantee: the bound rests on that normal approximation (errors are not bounded,
so no distribution-free bound is available without clipping them; heavy-tailed differences at few
samples can exceed it); the stratified timestep order is a fixed design, not independent draws, and
makes the sample mean less variable than independent draws (conservative, but outside the proof);
and "best" is the expected error over all (t, ε), which need not be the class the full evaluation
on one fixed grid and noise bank picks when two classes are within its own sampling error.

Spending (`spending`). 'even' spends delta / L at each of the L looks, L fixed before the first
sample. 'decaying' spends 6 delta / (pi^2 l^2) at look l: these shares sum to delta over any number of
looks, so the bound above holds without fixing L, and most of delta goes to the first looks, where most
candidates are dropped (with the t law's heavy tails at few samples, that is where a larger share buys
most). Either way the union over (look, candidate) pairs spends at most delta.

Indifference zone (`epsilon`). Two classes whose expected errors differ by a hair cannot be told apart
by any budget, and the plain rule spends max_samples on them. With epsilon, an image also stops once
every remaining candidate j satisfies mean(d_j) - thr se_j >= -epsilon m, m the leader's mean error
(d_j = e_j - e_leader, thr the threshold of that look): no candidate is then credibly better than the
leader by more than epsilon m, and the leader is the answer. What this adds to the guarantee: with
probability at least 1 - delta, b is never dropped and the answer's expected error is at most that of
b plus epsilon m. The proof needs no more tests: both failures are the same one-sided event, the mean
of e_b - e_j exceeding its expectation by more than thr standard errors for some j at some look, which
the union above already bounds. What it does not add: m is estimated, so the zone's width is as exact
as that estimate; and "within epsilon of the best expected error" is not "correct": on the images
where the classifier's best class is wrong anyway, it may settle for a near-tie sooner.

variance='stratified' (either threshold) estimates the standard error from differences between
neighbouring timesteps instead of the plain sample variance: the error differences change smoothly
with t, and the stratified order samples t evenly, so most of their spread is a trend that the mean
over an even grid does not suffer from. It prunes sooner; the bound above then also rests on that
smoothness (the neighbour differences must not underestimate the noise), an assumption, not a theorem.

variance='moderated' (or 'moderated-stratified', on top of the stratified estimator) borrows strength
across candidates, which many classes need: with K = 100 and the plain t statistic each class's variance
rests on its own n - 1 degrees of freedom, and at n = 10 with 99 rivals the threshold is about 7 standard
errors. The rivals' variances s_j^2 (d = n - 1 degrees of freedom each) are taken as draws from a scaled
inverse chi-square law whose scale s0^2 and degrees of freedom d0 are estimated from all of them (the
empirical Bayes moderated t statistic of Smyth, 2004); each rival's variance becomes
(d0 s0^2 + d s_j^2) / (d0 + d) and its t statistic has d0 + d degrees of freedom, so the threshold at a
few samples comes close to the normal one. The bound then also rests on that model of the variances
(exact when it holds, with normal differences; a best class whose differences vary far more than every
other class's is dropped too often); with fewer than POOL_MIN rivals nothing is borrowed.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from .staged import AdaptiveResult, adaptive_classify, reference_stages
from ..engine import LOG_LOSSES, Jobs
from ..errors import InputError


def stratified_timesteps(max_samples: int, T: int = 1000) -> list[int]:
    """The reference's evenly spaced grid of max_samples timesteps, in bit-reversed (van der Corput) order."""
    if not 1 <= max_samples <= T:
        raise InputError(f"max_samples must be in 1..{T}, got {max_samples}")
    grid = list(range(T // max_samples // 2, T, T // max_samples))[:max_samples]
    bits = max(1, (max_samples - 1).bit_length())
    order = sorted(range(max_samples), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))
    return [grid[i] for i in order]


VARIANCES = ("iid", "stratified", "moderated", "moderated-stratified")
POOL_MIN = 5  # rivals needed before 'moderated' estimates their common variance law


def trigamma_inverse(y: float) -> float:
    """x with trigamma(x) = y > 0 (Newton's method on 1/trigamma, which is nearly linear)."""
    from scipy.special import polygamma

    if y > 1e7:
        return 1.0 / y**0.5
    if y < 1e-6:
        return 1.0 / y
    x = 0.5 + 1.0 / y
    for _ in range(50):
        tri = float(polygamma(1, x))
        step = tri * (1.0 - tri / y) / float(polygamma(2, x))
        x += step
        if -step / x < 1e-8:
            break
    return x


def moderate(s2: torch.Tensor, dof: float) -> tuple[torch.Tensor, float]:
    """(moderated variances, their degrees of freedom): the empirical Bayes shrinkage of sample variances s2
    (G,), each with `dof` degrees of freedom, towards the scaled inverse chi-square law (s0^2, d0) fitted to
    all of them by moments of log s2 (Smyth 2004): (d0 s0^2 + dof s2) / (d0 + dof), with d0 + dof degrees of
    freedom (infinite when the s2 spread no more than sampling alone explains: every variance is then s0^2).
    With fewer than POOL_MIN positive variances nothing is borrowed."""
    from scipy.special import digamma, polygamma

    positive = s2[s2 > 0].double()
    if len(positive) < POOL_MIN:
        return s2, dof
    e = positive.log() - float(digamma(dof / 2)) + math.log(dof / 2)
    spread = float(e.var(unbiased=True)) - float(polygamma(1, dof / 2))
    if spread <= 0:
        return torch.full_like(s2, float(e.mean().exp())), math.inf
    d0 = 2.0 * trigamma_inverse(spread)
    s0 = float((e.mean() + float(digamma(d0 / 2)) - math.log(d0 / 2)).exp())
    return (d0 * s0 + dof * s2) / (d0 + dof), d0 + dof


def paired_differences(errors: torch.Tensor, t: torch.Tensor | None = None,
                       variance: str = "iid") -> tuple[int, torch.Tensor, torch.Tensor, float]:
    """(leader, mean paired difference to the leader (K,), its standard error (K,), the degrees of freedom of
    the t statistics) from the errors of the candidates on shared samples (K, n), n >= 2.

    variance 'iid': the sample variance of the differences (independent samples). 'stratified': the
    successive-difference estimator of systematic sampling, sum over neighbours in t of (d_i+1 - d_i)^2
    / (2 (n-1)), which leaves out the part of the spread that is a smooth trend of d over t; it needs the
    samples' timesteps t (n,). 'moderated' / 'moderated-stratified': either variance, moderated across the
    rivals of the leader (`moderate`). Degrees of freedom: n - 1, plus the moderation's d0.
    """
    n = errors.shape[1]
    leader = int(errors.mean(1).argmin())
    d = errors - errors[leader]  # (K, n) paired differences
    if variance not in VARIANCES:
        raise InputError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if variance.endswith("stratified"):
        ds = d[:, torch.argsort(t, stable=True)]
        s2 = ((ds[:, 1:] - ds[:, :-1]) ** 2).sum(1) / (2 * (n - 1))
    else:
        s2 = d.var(1, unbiased=True)
    dof = float(n - 1)
    if variance.startswith("moderated"):
        rivals = torch.arange(len(s2)) != leader
        s2 = s2.clone()
        s2[rivals], dof = moderate(s2[rivals], dof)
    return leader, d.mean(1), (s2 / n).sqrt(), dof


def paired_prune(errors: torch.Tensor, z: float, t: torch.Tensor | None = None, variance: str = "iid") -> torch.Tensor:
    """Keep-mask over candidates given their errors on shared samples (K, n): drop those worse than the
    leader by more than z paired standard errors (paired_differences gives the variance estimators)."""
    return prune_or_settle(errors, z, t, variance)[0]


def prune_or_settle(errors: torch.Tensor, z, t: torch.Tensor | None = None, variance: str = "iid",
                    epsilon: float | None = None, log_errors: bool = False,
                    shift: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """(paired_prune's keep-mask, whether the survivors are settled) from one computation of the paired
    differences; z is a threshold, or a function of the t statistics' degrees of freedom giving it. Settled
    (only with `epsilon`): no survivor can beat the leader by more than epsilon x the leader's mean error, i.e.
    every lower confidence bound mean(d_j) - z se_j of E[e_j - e_leader] is >= -epsilon x mean(e_leader) (the
    indifference zone of the statistical schedule's `epsilon`); with `log_errors` (errors that are logs, as
    --loss log_l2 gives) the bound is -epsilon itself: a ratio of geometric mean errors within about epsilon of 1.
    `shift` (K,): a constant added to each candidate's errors before they are compared (class offsets,
    class_offsets.ClassOffsets.shift); the zone stays relative to the leader's own mean error."""
    k, n = errors.shape
    if n < 2:
        return torch.ones(k, dtype=torch.bool), False
    raw = errors
    if shift is not None:
        errors = errors + shift.to(errors.dtype)[:, None]
    leader, mean, se, dof = paired_differences(errors, t, variance)
    z = z(dof) if callable(z) else z
    keep = mean <= z * se
    keep[leader] = True
    if epsilon is None or int(keep.sum()) < 2:
        return keep, False
    margin = epsilon if log_errors else epsilon * float(raw[leader].mean().abs())
    return keep, bool((mean - z * se)[keep].ge(-margin).all())


def n_looks(max_samples: int, min_samples: int, step: int | None = None) -> int:
    """Pruning looks of the statistical schedule: after min_samples, then every `step` timesteps up to max_samples."""
    step = step or min_samples
    return 1 + -(-(max_samples - min_samples) // step)


SPENDINGS = ("even", "decaying")


def look_alpha(delta: float, look: int, looks: int, spending: str = "even") -> float:
    """The share of delta spent at look `look` (1-based): 'even' delta / looks (the number of looks known
    before the first sample); 'decaying' 6 delta / (pi^2 look^2), which sums to delta over any number of
    looks and spends most where most candidates are dropped, at the first looks."""
    if spending == "even":
        return delta / looks
    if spending == "decaying":
        return 6.0 * delta / (math.pi**2 * look**2)
    raise InputError(f"spending must be one of {SPENDINGS}, got {spending!r}")


def anytime_threshold(n: int, delta: float, looks: int, n_candidates: int, look: int = 1,
                      spending: str = "even", dof: float | None = None) -> float:
    """One-sided t threshold at n paired samples (t statistics with `dof` degrees of freedom, n - 1 unless
    given; infinite: the normal law) that spends delta over looks x (n_candidates - 1) tests (look_alpha:
    evenly, or decaying with the look's number)."""
    from scipy.stats import norm
    from scipy.stats import t as student_t

    if n < 2:
        return float("inf")
    alpha = look_alpha(delta, look, looks, spending) / max(n_candidates - 1, 1)
    dof = n - 1 if dof is None else dof
    return float(norm.isf(alpha) if math.isinf(dof) else student_t.isf(alpha, dof))


def statistical_classify(
    evaluate: Callable[[Jobs], torch.Tensor],
    n_images: int,
    n_candidates: int,
    max_samples: int = 500,
    n_trials: int = 1,
    z: float = 3.0,
    min_samples: int = 10,
    step: int | None = None,
    T: int = 1000,
    delta: float | None = None,
    weights: torch.Tensor | None = None,
    variance: str = "iid",
    epsilon: float | None = None,
    spending: str = "even",
    log_errors: bool = False,
    shift: torch.Tensor | None = None,
) -> list[AdaptiveResult]:
    """Classify n_images at once; errors per (t, trial) of the k-th timestep use noise rows n_trials*k+trial.

    With `delta` the anytime-valid threshold (module docstring) replaces the fixed `z`. With `weights`
    (T,) positive, decisions use the weighted errors w(t)·e (records keep the raw errors). With `epsilon`
    an image also stops once no other candidate can beat the leader by more than epsilon x the leader's
    mean error (module docstring: the indifference zone); its survivors are then the leader alone.
    `spending` shares delta over the looks (look_alpha). `log_errors`: the errors are logs (prune_or_settle's zone).
    `shift` (n_candidates,): added to each candidate's (weighted) errors in every comparison and in the final
    ranking (class offsets, class_offsets.ClassOffsets.shift); records keep the raw errors.
    """
    if z <= 0:
        raise InputError(f"z must be positive, got {z}")
    if variance not in VARIANCES:
        raise InputError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if delta is not None and not 0 < delta < 1:
        raise InputError(f"delta must be in (0, 1), got {delta}")
    if epsilon is not None and not 0 <= epsilon < 1:
        raise InputError(f"epsilon must be in [0, 1), got {epsilon}")
    if spending not in SPENDINGS:
        raise InputError(f"spending must be one of {SPENDINGS}, got {spending!r}")
    if not 1 <= min_samples <= max_samples:
        raise InputError(f"min_samples must be in 1..max_samples ({max_samples}), got {min_samples}")
    timesteps = stratified_timesteps(max_samples, T)
    step = step or min_samples
    looks = n_looks(max_samples, min_samples, step)
    alive = [list(range(n_candidates)) for _ in range(n_images)]
    errs = [[[] for _ in range(n_candidates)] for _ in range(n_images)]  # [image][cand] -> list of (n_trials,) tensors
    ts_done = [[[] for _ in range(n_candidates)] for _ in range(n_images)]
    k0 = look = 0
    while k0 < max_samples:
        k1 = min(max_samples, k0 + (min_samples if k0 == 0 else step))
        active = [i for i in range(n_images) if len(alive[i]) > 1 or k0 == 0]
        if not active:
            break
        image, cond, ts, noise = [], [], [], []
        for i in active:
            for c in alive[i]:
                for k in range(k0, k1):
                    image += [i] * n_trials
                    cond += [c] * n_trials
                    ts += [timesteps[k]] * n_trials
                    noise += range(n_trials * k, n_trials * (k + 1))
        out = evaluate(Jobs.build(image, cond, ts, noise)).view(-1, k1 - k0, n_trials)  # (rows, k, trials)
        row = 0
        look += 1
        for i in active:
            for c in alive[i]:
                errs[i][c].append(out[row])
                ts_done[i][c] += timesteps[k0:k1]
                row += 1
            if len(alive[i]) > 1:
                e = torch.stack([torch.cat(errs[i][c]).flatten() for c in alive[i]])  # (K_alive, n)
                t_i = torch.tensor(ts_done[i][alive[i][0]]).repeat_interleave(n_trials)  # shared by the alive
                if weights is not None:
                    e = e * weights[t_i].to(e.dtype)
                thr = z if delta is None else functools.partial(anytime_threshold, e.shape[1], delta, looks,
                                                                 n_candidates, look, spending)
                sh = None if shift is None else shift[alive[i]]
                keep, settle = prune_or_settle(e, thr, t_i, variance, epsilon, log_errors, sh)
                if settle:  # the leader survives pruning and is the answer
                    ranked = (e.mean(1) if sh is None else e.mean(1) + sh.to(e.dtype)).masked_fill(~keep, math.inf)
                    keep = torch.arange(len(keep)) == int(ranked.argmin())
                alive[i] = [c for c, kp in zip(alive[i], keep.tolist()) if kp]
        k0 = k1
    results = []
    for i in range(n_images):
        data = {}
        for c in range(n_candidates):
            if errs[i][c]:
                e = torch.cat(errs[i][c])  # (n_t, n_trials)
                t = torch.tensor(ts_done[i][c]).repeat_interleave(n_trials)
                data[c] = {"t": t, "pred_errors": e.flatten()}
        w = (lambda t: 1.0) if weights is None else (lambda t: weights[t].to(torch.float32))
        means = {c: float((data[c]["pred_errors"] * w(data[c]["t"])).mean()) + (0.0 if shift is None else float(shift[c]))
                 for c in alive[i]}
        results.append(AdaptiveResult(pred=min(means, key=means.get), errors=data, survivors=list(alive[i])))
    return results


# The settings of the statistical schedule not given: with --delta, the anytime rule that benchmarks/default_rule.py
# chose on held-out images (docs/schedules.md); with a fixed z, the original rule.
ANYTIME_RULE = {"variance": "moderated-stratified", "spending": "decaying", "min_samples": 10, "epsilon": 0.01}
FIXED_Z_RULE = {"variance": "iid", "spending": "even", "min_samples": 10, "epsilon": None}


def rule_settings(delta: float | None = None, variance: str | None = None, spending: str | None = None,
                  min_samples: int | None = None, epsilon: float | None = None) -> dict:
    """The statistical schedule's variance, spending, min_samples and epsilon: those given, the others from
    ANYTIME_RULE (with delta) or FIXED_Z_RULE. epsilon 0 is no indifference zone (None)."""
    given = {"variance": variance, "spending": spending, "min_samples": min_samples, "epsilon": epsilon}
    base = FIXED_Z_RULE if delta is None else ANYTIME_RULE
    out = {k: base[k] if v is None else v for k, v in given.items()}
    out["epsilon"] = out["epsilon"] or None
    return out


def make_schedule(schedule: str, to_keep, n_samples, n_trials: int = 1, z: float = 3.0, min_samples: int | None = None,
                  T: int = 1000, delta: float | None = None, weights: torch.Tensor | None = None,
                  variance: str | None = None, epsilon: float | None = None,
                  spending: str | None = None, loss: str = "l2",
                  shift: torch.Tensor | None = None) -> tuple[Callable, int]:
    """(classify(evaluate, n_images, n_candidates), noise rows it needs) for 'reference' or 'statistical'.

    `delta` (statistical only) selects the anytime-valid threshold instead of the fixed z; `weights` (T,)
    makes either schedule decide on weighted errors w(t)·e; `shift` (K,) adds a constant to each candidate's errors
    in every decision (class offsets, class_offsets.ClassOffsets.shift). Settings not given: rule_settings. `loss`
    tells the indifference zone whether the errors are logs (log_l2).
    """
    if delta is not None and schedule != "statistical":
        raise InputError("--delta applies to --schedule statistical only")
    if epsilon is not None and schedule != "statistical":
        raise InputError("--epsilon applies to --schedule statistical only")
    settings = rule_settings(delta, variance, spending, min_samples, epsilon)
    variance, spending, min_samples, epsilon = (settings[k] for k in ("variance", "spending", "min_samples", "epsilon"))
    if spending != "even" and delta is None:
        raise InputError(f"--spending {spending} shares --delta over the looks: pass --delta (with --schedule statistical)")
    if schedule == "statistical":
        return (functools.partial(statistical_classify, max_samples=max(n_samples), n_trials=n_trials, z=z,
                                  min_samples=min_samples, T=T, delta=delta, weights=weights,
                                  variance=variance, epsilon=epsilon, spending=spending,
                                  log_errors=loss in LOG_LOSSES, shift=shift), n_trials * max(n_samples))
    if schedule == "reference":
        rows = n_trials * sum(len(s.timesteps) for s in reference_stages(to_keep, n_samples, T))
        return functools.partial(adaptive_classify, to_keep=to_keep, n_samples=n_samples, n_trials=n_trials, T=T,
                                 weights=weights, shift=shift), rows
    raise InputError(f"schedule must be 'reference' or 'statistical', got {schedule!r}")


class Replay:
    """`evaluate(jobs)` answered from the records of a full evaluation instead of the model.

    errors (N, K, S) at timesteps t (S,) of a full evaluation whose sample s used noise row noise_rows[s]
    (for statistical_classify's full evaluation, --min_samples = max_samples: the k-th stratified
    timestep with row k). Any schedule that asks only for those (t, noise row) pairs gets exactly the
    errors a real run would compute (check_noise=True enforces it); the reference's staged schedules
    use other noise rows (and grids), so with check_noise=False they are answered by the nearest scored
    timestep (another draw of noise, t moved by at most half the grid step). `evaluations` counts the
    jobs asked for.
    """

    def __init__(self, errors: torch.Tensor, t: torch.Tensor, noise_rows: torch.Tensor | None = None,
                 T: int = 1000, check_noise: bool = True):
        n, k, s = errors.shape
        t = torch.as_tensor(t, dtype=torch.long)
        if len(t) != s or len(set(t.tolist())) != s:
            raise InputError("replay needs one error per distinct timestep (n_trials = 1)")
        self.table = torch.full((n, k, T), float("nan"), dtype=errors.dtype)
        self.table[:, :, t] = errors
        self.row = torch.full((T,), -1, dtype=torch.long)
        if noise_rows is not None:
            self.row[t] = torch.as_tensor(noise_rows, dtype=torch.long)
        self.check_noise = check_noise and noise_rows is not None
        # without the noise check a timestep the full evaluation did not score is answered by the nearest one
        self.nearest = t[torch.argmin((torch.arange(T)[:, None] - t[None, :]).abs(), 1)]
        if self.check_noise:
            self.nearest = torch.arange(T)
        self.evaluations = 0

    def __call__(self, jobs: Jobs) -> torch.Tensor:
        self.evaluations += len(jobs)
        out = self.table[jobs.image, jobs.cond, self.nearest[jobs.t]]
        if torch.isnan(out).any():
            raise InputError("the schedule asked for a timestep the full evaluation did not score")
        if self.check_noise and not torch.equal(self.row[jobs.t], jobs.noise):
            raise InputError("the schedule asked for a (timestep, noise row) pair the full evaluation did not use")
        return out

    @staticmethod
    def stratified(errors: torch.Tensor, t: torch.Tensor, T: int = 1000, check_noise: bool = True) -> "Replay":
        """Replay of statistical_classify's full evaluation (errors sorted by timestep, as load_full_errors gives)."""
        order = stratified_timesteps(len(t), T)
        pos = {tt: k for k, tt in enumerate(order)}
        if sorted(order) != sorted(int(v) for v in t):
            raise InputError("these errors are not on the stratified grid of statistical_classify")
        return Replay(errors, t, torch.tensor([pos[int(v)] for v in t]), T, check_noise)
