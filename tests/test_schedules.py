"""The reference's staged schedule and the statistical schedule, on synthetic errors."""
from __future__ import annotations

import pytest
import torch

from diffusion_classifier.schedules.staged import adaptive_classify, n_evaluations, reference_stages, stage_jobs
from diffusion_classifier.engine import Jobs
from diffusion_classifier.schedules.statistical import paired_prune, statistical_classify, stratified_timesteps


def test_cifar10_schedule_costs_2750_evaluations():
    assert n_evaluations(10, [5, 1], [50, 500]) == 10 * 50 + 5 * 450
    stages = reference_stages([5, 1], [50, 500])
    assert list(stages[0].timesteps) == list(range(1, 1000, 2))[5::10][:50]
    assert stages[0].timesteps[:3] == (11, 31, 51)
    assert len(stages[1].timesteps) == 450 and stages[1].first_t_idx == 50
    assert not set(stages[0].timesteps) & set(stages[1].timesteps)


def test_stage_jobs_noise_rows_follow_t_idx():
    stage = reference_stages([2, 1], [2, 4])[1]  # grid 125,375,625,875; stage 2 adds 125 and 625
    jobs = stage_jobs(stage, candidates=[3, 1], n_trials=2)
    assert stage.timesteps == (125, 625) and stage.first_t_idx == 2
    assert jobs.t.tolist() == [125, 125, 625, 625] * 2
    assert jobs.noise.tolist() == [4, 5, 6, 7] * 2  # n_trials * t_idx + trial, t_idx counting on from 2
    assert jobs.cond.tolist() == [3] * 4 + [1] * 4


def synthetic(true_class: torch.Tensor, gap: float = 0.05, sd: float = 0.2):
    """Errors = shared per-(image, t, noise) term + a class penalty + small class noise: paired structure."""

    def evaluate(jobs: Jobs) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        shared = torch.rand(64, 1000, 64, generator=g)  # depends on (image, t, noise) only
        jitter = torch.randn(64, 16, 1000, 64, generator=g) * sd * 0.1
        base = shared[jobs.image, jobs.t, jobs.noise] * sd * 10
        penalty = gap * (jobs.cond != true_class[jobs.image]).float() * (1 + jobs.cond.float() / 10)
        return base + penalty + jitter[jobs.image, jobs.cond, jobs.t, jobs.noise]

    return evaluate


def test_adaptive_finds_the_class_and_keeps_every_error():
    truth = torch.tensor([3, 0, 7])
    res = adaptive_classify(synthetic(truth), 3, 10, [5, 1], [10, 50])
    assert [r.pred for r in res] == [3, 0, 7]
    assert all(len(r.errors[r.pred]["t"]) == 50 for r in res)
    assert all(sorted(len(d["t"]) for d in r.errors.values()).count(10) == 5 for r in res)


def test_stratified_order_is_a_permutation_with_even_prefixes():
    ts = stratified_timesteps(64)
    grid = list(range(1000 // 64 // 2, 1000, 1000 // 64))[:64]
    assert sorted(ts) == grid
    pos = torch.tensor([grid.index(t) for t in ts])
    assert pos[0] < 32 <= pos[1]  # first two straddle the middle of the grid
    for k in (4, 8, 16):
        quarters = pos[:k] // 16
        assert torch.bincount(quarters, minlength=4).tolist() == [k // 4] * 4


def test_paired_prune_uses_paired_differences():
    torch.manual_seed(0)
    shared = torch.randn(40) * 5  # large common variation: unpaired tests could not separate these
    errors = torch.stack([shared, shared + 0.1 + 0.01 * torch.randn(40), shared + 0.001 * torch.randn(40)])
    keep = paired_prune(errors, z=3.0)
    assert keep.tolist() == [True, False, True]
    assert paired_prune(errors[:, :1], z=3.0).all()  # one sample: no variance estimate, nothing pruned


def test_statistical_schedule_saves_evaluations_and_agrees_with_full():
    truth = torch.tensor([3, 0, 7, 9])
    ev = synthetic(truth)
    counts = {"n": 0}

    def counting(jobs):
        counts["n"] += len(jobs)
        return ev(jobs)

    res = statistical_classify(counting, 4, 10, max_samples=100, z=3.0, min_samples=8)
    assert [r.pred for r in res] == [3, 0, 7, 9]
    assert counts["n"] < 4 * 10 * 100 / 3
    # with an unreachable z nothing is pruned, and the prediction is the full evaluation's argmin
    full = statistical_classify(ev, 4, 10, max_samples=20, z=1e9, min_samples=5)
    for r in full:
        assert all(len(d["t"]) == 20 for d in r.errors.values())
        assert r.pred == int(r.mean_errors(10).argmin())


def test_statistical_rejects_bad_settings():
    with pytest.raises(ValueError, match="z must be positive"):
        statistical_classify(lambda j: torch.zeros(len(j)), 1, 2, z=0)
    with pytest.raises(ValueError, match="min_samples"):
        statistical_classify(lambda j: torch.zeros(len(j)), 1, 2, max_samples=5, min_samples=6)
