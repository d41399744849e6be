"""The anytime-valid statistical schedule: its bound on dropping the best class, checked by simulation."""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_classifier.engine import Jobs
from diffusion_classifier.errors import InputError
from diffusion_classifier.schedules.statistical import (
    anytime_threshold, make_schedule, n_looks, statistical_classify, stratified_timesteps)


def paired_errors(n_images: int, means: torch.Tensor, max_samples: int, sd: float = 1.0, shared_sd: float = 5.0,
                  seed: int = 0, heavy: bool = False):
    """evaluate(jobs) of synthetic paired errors: a large term shared by all classes at (image, sample),
    plus the class's known mean, plus independent noise per (image, class, sample)."""
    g = torch.Generator().manual_seed(seed)
    k = len(means)
    shared = torch.randn(n_images, max_samples, generator=g) * shared_sd
    if heavy:  # Student-t with 5 degrees of freedom, scaled to variance sd^2
        chi = torch.distributions.Chi2(5.0).sample((n_images, k, max_samples))
        own = torch.randn(n_images, k, max_samples, generator=g) / (chi / 5.0).sqrt() * sd * (3 / 5) ** 0.5
    else:
        own = torch.randn(n_images, k, max_samples, generator=g) * sd
    pos = torch.full((1000,), -1, dtype=torch.long)
    pos[torch.tensor(stratified_timesteps(max_samples))] = torch.arange(max_samples)

    def evaluate(jobs: Jobs) -> torch.Tensor:
        s = pos[jobs.t]
        assert torch.equal(s, jobs.noise)  # the k-th timestep comes with noise row k
        return shared[jobs.image, s] + means[jobs.cond] + own[jobs.image, jobs.cond, s]

    return evaluate


def best_pruned_rate(rule: dict, means, n_images=600, max_samples=40, min_samples=5, seed=0, heavy=False) -> float:
    ev = paired_errors(n_images, means, max_samples, seed=seed, heavy=heavy)
    res = statistical_classify(ev, n_images, len(means), max_samples=max_samples, min_samples=min_samples, **rule)
    return sum(0 not in r.survivors for r in res) / n_images


# class 0 is best by a hair, four competitors almost as good: the hardest case for the bound
NEAR_TIE = torch.tensor([0.0, 0.02, 0.02, 0.02, 0.02, 1.0])


def test_anytime_rule_prunes_the_best_class_less_often_than_delta():
    delta = 0.05
    rate = best_pruned_rate({"delta": delta}, NEAR_TIE)  # 600 simulated images
    assert rate <= delta, rate
    # the fixed-z rule looks 8 times at z = 2 and breaks the same nominal level
    fixed = best_pruned_rate({"z": 2.0}, NEAR_TIE)
    assert fixed > 0.2 > rate, (fixed, rate)


def test_stratified_variance_keeps_the_bound_on_unstructured_errors():
    assert best_pruned_rate({"delta": 0.05, "variance": "stratified"}, NEAR_TIE, seed=2) <= 0.05


def test_anytime_bound_holds_for_moderately_heavy_tails():
    assert best_pruned_rate({"delta": 0.1}, NEAR_TIE, n_images=400, heavy=True, seed=1) <= 0.1


def test_anytime_rule_still_prunes_clear_losers():
    means = torch.tensor([0.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    ev = paired_errors(100, means, 40)
    calls = {"n": 0}

    def counting(jobs):
        calls["n"] += len(jobs)
        return ev(jobs)

    res = statistical_classify(counting, 100, 6, max_samples=40, min_samples=5, delta=0.05)
    assert all(r.pred == 0 for r in res)
    assert calls["n"] / 100 < 0.4 * 6 * 40  # far fewer than the full evaluation
    assert sum(len(r.survivors) == 1 for r in res) > 95


def test_threshold_spends_delta_over_looks_and_candidates():
    assert n_looks(200, 10) == 20 and n_looks(200, 10, 20) == 11 and n_looks(10, 10) == 1
    a = anytime_threshold(50, 0.05, 20, 10)
    assert a > anytime_threshold(50, 0.05, 1, 2) > 0  # more tests, higher bar
    assert anytime_threshold(50, 0.01, 20, 10) > a  # smaller delta, higher bar
    assert anytime_threshold(1, 0.05, 20, 10) == float("inf")  # no variance estimate: never prune
    from scipy.stats import t

    assert a == pytest.approx(t.ppf(1 - 0.05 / (20 * 9), 49))


def test_delta_is_checked():
    with pytest.raises(InputError, match="delta"):
        statistical_classify(lambda j: torch.zeros(len(j)), 1, 2, max_samples=10, min_samples=5, delta=1.5)
    with pytest.raises(InputError, match="statistical"):
        make_schedule("reference", [1], [10], delta=0.1)


def test_decaying_spending_keeps_the_bound_and_sums_to_delta_over_any_number_of_looks():
    from diffusion_classifier.schedules.statistical import look_alpha

    assert sum(look_alpha(0.05, l, 0, "decaying") for l in range(1, 10_000)) == pytest.approx(0.05, rel=1e-3)
    assert sum(look_alpha(0.05, l, 0, "decaying") for l in range(1, 10_000)) < 0.05
    # it spends more than the even share at the first looks of a 20-look schedule, less at the last
    assert anytime_threshold(20, 0.05, 20, 10, 1, "decaying") < anytime_threshold(20, 0.05, 20, 10, 1, "even")
    assert anytime_threshold(200, 0.05, 20, 10, 20, "decaying") > anytime_threshold(200, 0.05, 20, 10, 20, "even")
    for variance, seed in (("iid", 3), ("stratified", 4)):
        rate = best_pruned_rate({"delta": 0.05, "spending": "decaying", "variance": variance}, NEAR_TIE, seed=seed)
        assert rate <= 0.05, (variance, rate)
    with pytest.raises(InputError, match="spending"):
        statistical_classify(lambda j: torch.zeros(len(j)), 1, 2, max_samples=10, min_samples=5, delta=0.1,
                             spending="front")
    with pytest.raises(InputError, match="--delta"):
        make_schedule("statistical", [1], [10], spending="decaying")


# errors around 10: classes 1 and 2 are within the indifference zone (epsilon 0.01 of 10 = 0.1) of the best,
# classes 3 and 4 just beyond it, 5 far beyond
LEVEL_MEANS = torch.tensor([10.0, 10.04, 10.04, 10.12, 10.12, 11.0])


def test_indifference_zone_answers_within_epsilon_of_the_best_with_probability_one_minus_delta():
    n, max_samples = 600, 60
    ev = paired_errors(n, LEVEL_MEANS, max_samples, sd=0.1, seed=5)
    rule = dict(max_samples=max_samples, min_samples=5, delta=0.05, spending="decaying")
    res = statistical_classify(ev, n, len(LEVEL_MEANS), epsilon=0.01, **rule)
    too_bad = sum(float(LEVEL_MEANS[r.pred] - LEVEL_MEANS[0]) > 0.01 * 10.0 for r in res) / n
    assert too_bad <= 0.05, too_bad
    # the zone is what stops near-ties early: without it most images run to max_samples with 3 classes alive
    assert sum(len(r.survivors) == 1 for r in res) > 0.9 * n
    plain = statistical_classify(ev, n, len(LEVEL_MEANS), **rule)
    assert sum(len(r.survivors) > 1 for r in plain) > 0.5 * n


def test_indifference_zone_costs_fewer_evaluations_on_ties_and_changes_nothing_on_clear_cases():
    def cost(means, epsilon, seed):
        ev = paired_errors(200, means, 60, sd=0.1, seed=seed)
        calls = {"n": 0}

        def counting(jobs):
            calls["n"] += len(jobs)
            return ev(jobs)

        res = statistical_classify(counting, 200, len(means), max_samples=60, min_samples=5, delta=0.05,
                                   epsilon=epsilon)
        return calls["n"], [r.pred for r in res]

    ties = torch.tensor([10.0, 10.0, 10.0, 12.0])
    assert cost(ties, 0.01, 6)[0] < 0.6 * cost(ties, None, 6)[0]
    clear = torch.tensor([10.0, 13.0, 13.0, 13.0])  # settled by pruning alone: the zone never decides
    assert cost(clear, 0.01, 7) == cost(clear, None, 7)
    with pytest.raises(InputError, match="epsilon"):
        statistical_classify(lambda j: torch.zeros(len(j)), 1, 2, max_samples=10, min_samples=5, epsilon=-0.1)
    with pytest.raises(InputError, match="statistical"):
        make_schedule("reference", [1], [10], epsilon=0.01)


def test_moderation_recovers_the_variance_law_and_borrows_nothing_it_should_not():
    from diffusion_classifier.schedules.statistical import POOL_MIN, moderate

    torch.manual_seed(8)  # torch.distributions samples from the global generator
    dof, s0, d0 = 4.0, 2.0, 12.0
    # true variances from a scaled inverse chi-square law (s0, d0), sample variances with dof degrees of freedom
    true = d0 * s0 / torch.distributions.Chi2(d0).sample((4000,))
    s2 = true * torch.distributions.Chi2(dof).sample((4000,)) / dof
    post, post_dof = moderate(s2, dof)
    assert post_dof - dof == pytest.approx(d0, rel=0.25)
    assert post.median() == pytest.approx(s0, rel=0.2)
    # shrinkage: the spread of the variances narrows
    assert float(post.log().std()) < float(s2.log().std())
    # one common variance: the spread is sampling alone, so nearly everything is pooled (d0 very large or infinite)
    same = torch.distributions.Chi2(dof).sample((4000,)) / dof * 3.0
    pooled, inf_dof = moderate(same, dof)
    assert inf_dof > 50 * dof and pooled.std() < 0.2 * same.std()
    # too few rivals: nothing is borrowed
    few = s2[:POOL_MIN - 1]
    assert moderate(few, dof) == (few, dof)


MANY = torch.cat([torch.zeros(1), torch.full((9,), 0.05), torch.full((90,), 1.5)])  # 100 classes, 9 near-ties


def test_moderated_variance_keeps_the_bound_and_prunes_many_classes_after_a_few_samples():
    def run(variance, seed):
        ev = paired_errors(200, MANY, 40, seed=seed)
        calls = {"n": 0}

        def counting(jobs):
            calls["n"] += len(jobs)
            return ev(jobs)

        res = statistical_classify(counting, 200, len(MANY), max_samples=40, min_samples=3, delta=0.05,
                                   spending="decaying", variance=variance)
        return sum(0 not in r.survivors for r in res) / 200, calls["n"] / 200

    for variance, seed in (("moderated", 9), ("moderated-stratified", 10)):
        dropped, cost = run(variance, seed)
        assert dropped <= 0.05, (variance, dropped)
        plain_dropped, plain_cost = run("iid", seed)
        assert cost < 0.8 * plain_cost, (variance, cost, plain_cost)


def test_rule_settings_fill_what_is_not_given():
    from diffusion_classifier.schedules.statistical import ANYTIME_RULE, FIXED_Z_RULE, rule_settings

    assert rule_settings() == FIXED_Z_RULE
    assert rule_settings(0.05) == ANYTIME_RULE
    given = rule_settings(0.05, variance="iid", spending="even", min_samples=10, epsilon=0)
    assert given == {"variance": "iid", "spending": "even", "min_samples": 10, "epsilon": None}  # 0: no zone
    assert rule_settings(0.05, min_samples=7)["min_samples"] == 7




def test_the_zone_of_log_errors_is_a_ratio_of_geometric_means():
    """With log errors (--loss log_l2) the zone bounds the difference of mean log errors by epsilon itself (a ratio
    of geometric mean errors within about epsilon of 1), not by epsilon x |the leader's mean log error|, which
    depends on the errors' units."""
    from diffusion_classifier.schedules.statistical import make_schedule, prune_or_settle

    g = torch.Generator().manual_seed(12)
    base = torch.randn(40, generator=g) * 0.3 + math.log(1e-3)  # log errors around log(0.001) = -6.9
    # candidate 1 trails the leader by 0.2% with a spread that keeps it alive: its lower bound at z = 3 is
    # 0.002 - 3 x 0.002 = -0.004 (it might be better by up to 0.4%); candidate 2 is far worse
    noise = torch.randn(40, generator=g)
    noise = (noise - noise.mean()) / noise.std() * 0.002 * 40**0.5
    errors = torch.stack([base, base + 0.002 + noise, base + 1.0])
    settled = lambda eps, log_errors: prune_or_settle(errors, 3.0, None, "iid", eps, log_errors)[1]  # noqa: E731
    assert prune_or_settle(errors, 3.0)[0].tolist() == [True, True, False]
    assert settled(0.01, True)  # nothing can be better than the leader by 1%: the zone stops the image
    assert not settled(0.001, True)  # candidate 1 might be better by more than 0.1%
    assert settled(0.001, False)  # scaled by |mean log error| = 6.9, a "0.1%" zone would be 0.7% wide
    classify, _ = make_schedule("statistical", [1], [60], delta=0.05, loss="log_l2")
    plain, _ = make_schedule("statistical", [1], [60], delta=0.05)
    assert classify.keywords["log_errors"] and not plain.keywords["log_errors"]
