"""weight_fixing against its paper (Weight Fixing Networks, arXiv 2210.13554): the ten-step
fixing schedule, power-of-two and additive power-of-two centres, the greedy relative-distance
clustering, frozen fixed weights, the regularizer, the deployed codebook, float checkpoints."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from runners.engine.trial import ConfigError, build_optimizer, resolve, train
from schemas.trial import OptimizerConfig, TrialConfig
from strategies.base import Progress
from strategies.layers import parametrizations
from strategies.metrics import weight_metrics
from strategies.space import SpaceError
from strategies.testing import TinyNet, short_training, tiny_data
from strategies.weight_fixing import (
    FRACTIONS,
    STEPS,
    WeightFixing,
    _Fixable,
    _select,
    _SoftDistanceSum,
    bracket,
    centre_magnitudes,
    fix_weights,
    geometric_grid,
    soft_relative_distance,
)

GAMMA0 = 2.0**-7


def signed_pow2_terms(v: float) -> int:
    """Fewest signed powers of two summing to v: the weight of the non-adjacent form of its
    mantissa, computed exactly on integers (0 for 0)."""
    if v == 0:
        return 0
    m, _ = math.frexp(abs(v))
    n = int(m * 2**53)  # exact: a float32 mantissa has 24 bits
    count = 0
    while n:
        if n & 1:
            n -= 2 - (n & 3)
            count += 1
        n >>= 1
    return count


def exported_values(strategy: WeightFixing, model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([layer.weight.reshape(-1) for layer in strategy.export(model).values()])


def fixed_masks(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.fixed.clone() for _, _, p in parametrizations(model, _Fixable)]


def run_epochs(strategy: WeightFixing, model: torch.nn.Module, epochs: int) -> list[bool]:
    """Call on_epoch_end for each epoch without training; what each call returned."""
    out = []
    for e in range(epochs):
        out.append(
            strategy.on_epoch_end(
                model, Progress(epoch=e, epochs=epochs, step=e, steps_per_epoch=1)
            )
        )
    return out


def gaussian(n: int = 20_000, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.1


# -- the schedule -------------------------------------------------------------------------------


def test_short_trial_ends_with_every_weight_fixed() -> None:
    strategy, model = short_training(WeightFixing, {}, seed=0, epochs=3)
    assert strategy.extra_metrics(model)["fixed_fraction"] == 1.0


def test_each_step_fixes_its_fraction_of_all_weights() -> None:
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=1))
    model = strategy.prepare(TinyNet())
    n = sum(m.numel() for m in fixed_masks(model))
    counts = []
    for e in range(STEPS):
        strategy.on_epoch_end(model, Progress(epoch=e, epochs=STEPS, step=e, steps_per_epoch=1))
        counts.append(sum(int(m.sum()) for m in fixed_masks(model)))
    assert counts == [math.floor(f * n + 0.5) for f in FRACTIONS]


@pytest.mark.parametrize("epochs", range(1, 31))
def test_last_step_falls_on_the_last_epoch(epochs: int) -> None:
    strategy = WeightFixing()
    at = [strategy.step_epoch(s, epochs) for s in range(STEPS)]
    assert (
        at[-1] == epochs - 1 and at == sorted(at) and at[0] == strategy.pretrain_epochs(epochs) - 1
    )


def test_fewer_epochs_than_steps_run_several_steps_at_one_epoch_end() -> None:
    strategy = WeightFixing()  # 3 epochs: 1 float epoch, then 9 steps over 2 epochs
    assert [strategy.step_epoch(s, 3) for s in range(STEPS)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]


def test_a_fixing_step_asks_for_a_fresh_optimizer() -> None:
    strategy = WeightFixing()  # 12 epochs: 4 float epochs, then one step per epoch end
    model = strategy.prepare(TinyNet())
    assert run_epochs(strategy, model, 12) == [e >= 3 for e in range(12)]


def test_selectable_only_once_every_weight_is_fixed() -> None:
    strategy = WeightFixing()
    model = strategy.prepare(TinyNet())
    selectable = []
    for e in range(4):
        progress = Progress(epoch=e, epochs=4, step=e, steps_per_epoch=1)
        strategy.on_epoch_end(model, progress)
        selectable.append(strategy.selectable(progress))
    assert selectable == [False, False, False, True]


def test_delta_t_shrinks_from_ten_delta_to_delta() -> None:
    strategy = WeightFixing(WeightFixing.Params(delta=0.01))
    assert [strategy.delta_t(t) for t in range(STEPS)] == pytest.approx(
        [0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01]
    )


# -- centres and clustering ---------------------------------------------------------------------


def nearest_relative_distance(m: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Per magnitude m: min over grid points g of |m - g| / m (float64)."""
    j = torch.searchsorted(grid, m).clamp(1, grid.numel() - 1)
    return torch.minimum((m - grid[j - 1]).abs(), (grid[j] - m).abs()) / m


@pytest.mark.parametrize("delta", [0.0075, 0.015, 0.05, 0.1, 0.3])
def test_grid_ratio_is_one_plus_delta_over_one_minus_delta(delta: float) -> None:
    grid = geometric_grid(GAMMA0, 4.0, delta, torch.device("cpu"))
    ratios = grid[1:] / grid[:-1]
    assert grid[0] == GAMMA0 and float(grid[-1]) >= 4.0 and float(grid[-2]) < 4.0
    assert torch.allclose(ratios, torch.full_like(ratios, (1 + delta) / (1 - delta)), rtol=1e-12)


@pytest.mark.parametrize("delta", [0.0075, 0.015, 0.05, 0.1, 0.3])
def test_every_magnitude_in_range_is_within_delta_of_a_grid_point(delta: float) -> None:
    grid = geometric_grid(GAMMA0, 4.0, delta, torch.device("cpu"))
    m = torch.logspace(math.log10(GAMMA0), math.log10(4.0), 400_000, dtype=torch.float64)
    d = nearest_relative_distance(m, grid)
    # Within delta everywhere, and the worst case is delta itself (halfway between neighbours
    # relative to the magnitude): a grid twice as dense would stay below delta / (2 - delta).
    assert float(d.max()) <= delta * (1 + 1e-9)
    assert float(d.max()) >= 0.99 * delta


@pytest.mark.parametrize("delta", [0.0075, 0.015, 0.05])
def test_one_octave_holds_the_grid_points_of_ratio_one_plus_delta_over_one_minus_delta(
    delta: float,
) -> None:
    grid = geometric_grid(GAMMA0, 4.0, delta, torch.device("cpu"))
    per_octave = int(((grid >= 0.25) & (grid < 0.5)).sum())
    expected = math.log(2) / math.log((1 + delta) / (1 - delta))
    denser = math.log(2) / -math.log1p(-delta)  # ratio 1 / (1 - delta): about twice as many
    assert math.floor(expected) <= per_octave <= math.ceil(expected)
    assert per_octave < 0.6 * denser


@pytest.mark.parametrize("delta", [1 / 3, 0.5, 1.0])
def test_grid_ratio_stops_at_two_past_a_third(delta: float) -> None:
    grid = geometric_grid(GAMMA0, 4.0, delta, torch.device("cpu"))
    assert torch.allclose(grid[:10], GAMMA0 * 2.0 ** torch.arange(10, dtype=torch.float64))
    m = torch.logspace(math.log10(GAMMA0), math.log10(4.0), 100_000, dtype=torch.float64)
    assert float(nearest_relative_distance(m, grid).max()) <= 1 / 3 + 1e-9


def test_centres_with_more_terms_come_from_the_grid() -> None:
    # At 0.015 the grid has 23 points an octave (the denser 1 / (1 - delta) grid 46): rounded
    # to two or three terms they give more centres there than powers of two alone, but no more
    # than the grid points and the octave's power of two; every power of two stays a centre.
    pows = centre_magnitudes(1.0, 0.015, 1, GAMMA0, torch.device("cpu"))
    for terms in (2, 3):
        mags = centre_magnitudes(1.0, 0.015, terms, GAMMA0, torch.device("cpu"))
        octave = mags[(mags >= 0.25) & (mags < 0.5)]
        assert bool(torch.isin(pows, mags).all()) and 1 < octave.numel() <= 24


def test_exported_values_are_zero_or_powers_of_two_with_one_term() -> None:
    strategy, model = short_training(WeightFixing, {"max_terms": 1}, seed=0, epochs=3)
    mantissa, _ = torch.frexp(exported_values(strategy, model))
    assert bool(((mantissa == 0) | (mantissa.abs() == 0.5)).all())


@pytest.mark.parametrize("max_terms", [1, 2, 3])
def test_centres_are_sums_of_at_most_max_terms_signed_powers_of_two(max_terms: int) -> None:
    w = gaussian()
    fixed, value = torch.zeros_like(w, dtype=torch.bool), torch.zeros_like(w)
    for t in range(STEPS):  # delta this small needs every term allowed
        delta_t = max(0.002, 0.002 * (STEPS - t))
        target = math.floor(FRACTIONS[t] * w.numel() + 0.5)
        fix_weights(w, fixed, value, target, delta_t, max_terms=max_terms, gamma0=GAMMA0)
    assert max(signed_pow2_terms(float(v)) for v in torch.unique(value)) == max_terms


def test_each_centre_keeps_mean_relative_distance_within_delta_t() -> None:
    w = gaussian()
    fixed, value = torch.zeros_like(w, dtype=torch.bool), torch.zeros_like(w)
    report = fix_weights(w, fixed, value, 6_000, 0.02, max_terms=3, gamma0=GAMMA0)
    big = fixed & (w.abs() >= GAMMA0)
    centres, inverse = torch.unique(value[big], return_inverse=True)
    rel = (w[big] - value[big]).abs() / w[big].abs()
    means = torch.zeros(centres.numel()).index_add_(0, inverse, rel) / torch.bincount(inverse)
    assert report.allowed == 0.02 and float(means.max()) <= 0.02 + 1e-6


def test_each_weight_is_fixed_to_its_nearest_centre() -> None:
    # A large delta_t (0.5) is where letting any centre take any weight collapsed accuracy.
    w = gaussian()
    fixed, value = torch.zeros_like(w, dtype=torch.bool), torch.zeros_like(w)
    fix_weights(w, fixed, value, 6_000, 0.5, max_terms=1, gamma0=GAMMA0)
    pows = torch.exp2(torch.arange(-7.0, 3.0))
    centres = torch.cat([-pows, pows])
    nearest = centres[(w[:, None] - centres).abs().argmin(1)]
    nearest = torch.where(w.abs() < GAMMA0, torch.zeros_like(w), nearest)
    assert torch.equal(value[fixed], nearest[fixed])


def test_magnitudes_below_gamma0_are_fixed_to_zero() -> None:
    w = gaussian()
    fixed, value = torch.zeros_like(w, dtype=torch.bool), torch.zeros_like(w)
    fix_weights(w, fixed, value, w.numel(), 0.015, max_terms=3, gamma0=GAMMA0)
    assert torch.equal(value == 0, w.abs() < GAMMA0)


# -- training -----------------------------------------------------------------------------------


def test_fixed_weights_stay_exactly_at_their_centre_under_training() -> None:
    torch.manual_seed(0)
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=0))  # fixes 30% in prepare
    model = strategy.prepare(TinyNet())
    before = [(p.fixed.clone(), p.value.clone()) for _, _, p in parametrizations(model, _Fixable)]
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.1)
    x, y = tiny_data()
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        reg = strategy.regularizer(model, loss)
        opt.zero_grad()
        (loss + reg).backward()
        opt.step()
    after = [layer.weight.detach() for _, layer, _ in parametrizations(model, _Fixable)]
    assert all(torch.equal(w[m], v[m]) for (m, v), w in zip(before, after, strict=True))


def test_fixed_weights_get_zero_gradient() -> None:
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=0))
    model = strategy.prepare(TinyNet())
    x, y = tiny_data()
    F.cross_entropy(model(x), y).backward()
    grads = [
        (layer.parametrizations.weight.original.grad, p.fixed)
        for _, layer, p in parametrizations(model, _Fixable)
    ]
    assert all(bool((g[m] == 0).all()) for g, m in grads)


def test_regularizer_equals_lambda_times_task_loss_while_fixing() -> None:
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=0, reg_lambda=0.4))
    model = strategy.prepare(TinyNet())
    x, y = tiny_data()
    loss = F.cross_entropy(model(x), y)
    reg = strategy.regularizer(model, loss)
    assert reg is not None and float(reg) == pytest.approx(0.4 * float(loss))


def test_no_regularizer_during_float_pretraining() -> None:
    strategy = WeightFixing()
    model = strategy.prepare(TinyNet())
    x, y = tiny_data()
    assert strategy.regularizer(model, F.cross_entropy(model(x), y)) is None


def test_regularizer_pulls_free_weights_towards_centres() -> None:
    torch.manual_seed(0)
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=0, reg_lambda=1.0))
    model = strategy.prepare(TinyNet())
    x, y = tiny_data()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def distance() -> float:
        d = strategy.soft_distance(model)
        assert d is not None
        return float(d)

    first = distance()
    for _ in range(20):
        loss = F.cross_entropy(model(x), y)
        reg = strategy.regularizer(model, loss)
        assert reg is not None
        opt.zero_grad()
        reg.backward()  # the penalty alone: its gradient must pull weights to their centres
        opt.step()
    assert distance() < 0.9 * first


def test_resumed_strategy_continues_the_schedule_identically() -> None:
    torch.manual_seed(0)
    a = WeightFixing()
    model_a = a.prepare(TinyNet())
    run_epochs(a, model_a, 2)  # epochs 0-1 of 6: step 0 done
    b = WeightFixing()
    model_b = b.prepare(TinyNet())
    model_b.load_state_dict(copy.deepcopy(model_a.state_dict()))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for e in range(2, 6):
        p = Progress(epoch=e, epochs=6, step=e, steps_per_epoch=1)
        a.on_epoch_end(model_a, p)
        b.on_epoch_end(model_b, p)
    assert torch.equal(exported_values(a, model_a), exported_values(b, model_b))


# -- deployment ---------------------------------------------------------------------------------


def test_codes_index_each_layers_codebook() -> None:
    strategy, model = short_training(WeightFixing, {}, seed=0, epochs=3)
    layers = strategy.export(model).values()
    assert all(
        torch.equal(torch.tensor(layer.info["codebook"])[layer.codes.long()], layer.weight)
        for layer in layers
        if layer.codes is not None
    ) and all(layer.codes is not None for layer in layers)


def test_bits_are_the_width_of_a_codebook_index() -> None:
    strategy, model = short_training(WeightFixing, {}, seed=0, epochs=3)
    for layer in strategy.export(model).values():
        k = torch.unique(layer.weight).numel()
        assert (layer.bits, layer.n_floats) == (max(1, math.ceil(math.log2(k))), k)


def test_reported_centres_match_the_exported_unique_values() -> None:
    strategy, model = short_training(WeightFixing, {}, seed=0, epochs=3)
    m = weight_metrics(strategy.export(model))
    assert strategy.extra_metrics(model)["centres_in_use"] == m.unique_weights


def test_partially_fixed_layers_deploy_as_float32() -> None:
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=0))
    model = strategy.prepare(TinyNet())
    assert all(
        layer.bits == 32 and layer.codes is None for layer in strategy.export(model).values()
    )


# -- init_checkpoint ----------------------------------------------------------------------------


def test_init_checkpoint_starts_from_its_float_weights(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = TinyNet()
    torch.save(source.state_dict(), tmp_path / "float.pt")
    torch.manual_seed(2)
    strategy = WeightFixing(
        WeightFixing.Params(init_checkpoint=str(tmp_path / "float.pt"), pretrain_epochs=1)
    )
    model = strategy.prepare(TinyNet())
    assert all(
        torch.equal(layer.parametrizations.weight.original, getattr(source, name).weight)
        for name, layer, _ in parametrizations(model, _Fixable)
    )


def test_init_checkpoint_without_pretraining_fixes_the_first_step_at_once(tmp_path: Path) -> None:
    torch.save(TinyNet().state_dict(), tmp_path / "float.pt")
    strategy = WeightFixing(WeightFixing.Params(init_checkpoint=str(tmp_path / "float.pt")))
    model = strategy.prepare(TinyNet())
    assert strategy.extra_metrics(model)["fixed_fraction"] == pytest.approx(FRACTIONS[0], abs=1e-3)


def test_missing_init_checkpoint_is_refused_naming_the_param() -> None:
    config = TrialConfig(strategy="weight_fixing", params={"init_checkpoint": "/no/such/file.pt"})
    with pytest.raises(ConfigError) as e:
        resolve(config)
    assert e.value.field == "params.init_checkpoint"


@pytest.mark.parametrize("content", ["garbage", "other_model"])
def test_unloadable_init_checkpoint_names_the_param(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.pt"
    if content == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    strategy = WeightFixing(WeightFixing.Params(init_checkpoint=str(path)))
    with pytest.raises(SpaceError) as e:
        strategy.prepare(TinyNet())
    assert e.value.field == "params.init_checkpoint"


# -- a real trial -------------------------------------------------------------------------------


@pytest.mark.slow
def test_digits_mlp_reaches_90_percent_with_every_weight_a_short_power_of_two_sum() -> None:
    trained = train(TrialConfig(strategy="weight_fixing", dataset="digits", model="mlp", epochs=10))
    strategy = trained.strategy
    assert isinstance(strategy, WeightFixing)
    values = torch.unique(exported_values(strategy, trained.model))
    assert trained.result.test_accuracy >= 0.90
    assert max(signed_pow2_terms(float(v)) for v in values) <= strategy.cfg.max_terms


def test_weights_below_gamma0_are_not_pulled_by_the_regularizer() -> None:
    # |w| < gamma0 is fixed to zero by the clustering: zero distance, zero gradient.
    from strategies.weight_fixing import soft_relative_distance

    w = torch.tensor([0.6 * GAMMA0, -0.9 * GAMMA0, 3 * GAMMA0], requires_grad=True)
    c_lo = torch.tensor([GAMMA0, -GAMMA0, 2 * GAMMA0])
    c_hi = torch.tensor([2 * GAMMA0, GAMMA0, 4 * GAMMA0])
    d = soft_relative_distance(w, c_lo, c_hi, 0.05, GAMMA0)
    d.sum().backward()
    assert w.grad is not None
    assert d[:2].tolist() == [0.0, 0.0] and w.grad[:2].tolist() == [0.0, 0.0]
    assert float(d[2]) > 0 and float(w.grad[2]) != 0


def test_epochs_per_step_trains_that_many_epochs_between_fixing_steps() -> None:
    strategy = WeightFixing(WeightFixing.Params(epochs_per_step=3, pretrain_epochs=2))
    assert [strategy.step_epoch(k, 29) for k in range(STEPS)] == [1 + 3 * k for k in range(STEPS)]


def test_a_trial_too_short_for_epochs_per_step_is_refused_naming_the_param() -> None:
    config = TrialConfig(
        strategy="weight_fixing", epochs=20, params={"epochs_per_step": 3, "pretrain_epochs": 2}
    )
    with pytest.raises(ConfigError) as e:
        resolve(config)
    assert e.value.field == "params.epochs_per_step"
    assert "need 29 epochs; the trial has 20" in e.value.reason
    resolve(config.model_copy(update={"epochs": 29}))


# -- the fast paths against the plain expressions ------------------------------------------------


def _select_plain(
    w: torch.Tensor, mags: torch.Tensor, allowed: float, gamma0: float, needed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy pick of `_select` in plain torch ops (bool masks, indexing, a float sort)."""
    n, k = w.numel(), mags.numel()
    a = w.abs()
    small = a < gamma0
    j = torch.searchsorted(mags, a)
    lo = (j - 1).clamp(0, k - 1)
    hi = j.clamp(0, k - 1)
    near = torch.where((a - mags[lo]).abs() <= (mags[hi] - a).abs(), lo, hi)
    value = torch.where(small, torch.zeros_like(w), torch.copysign(mags[near], w))
    dist = torch.where(small, torch.zeros_like(w), (a - mags[near]).abs() / a.clamp_min(gamma0))
    group = torch.where(
        small, torch.full_like(near, k), torch.where(w > 0, k + 1 + near, k - 1 - near)
    )
    counts = torch.bincount(group, minlength=2 * k + 1)
    rank = torch.empty_like(counts)
    rank[torch.argsort(counts, descending=True, stable=True)] = torch.arange(counts.numel())
    scale = float(dist.max()) + 1.0
    key, order = torch.sort(
        rank[group].to(torch.float64) + dist.to(torch.float64) / scale, stable=True
    )
    r = key.floor()
    d = (key - r) * scale
    r = r.long()
    sizes = counts[torch.argsort(rank)]
    starts = torch.cumsum(sizes, 0) - sizes
    csum = torch.cumsum(d, 0)
    base = (csum - d)[starts.clamp(max=n - 1)]
    pos = torch.arange(1, n + 1) - starts[r]
    ok = (csum - base[r]) / pos <= allowed
    picked = order[torch.nonzero(ok).squeeze(1)[:needed]]
    return picked, value[picked]


@pytest.mark.parametrize("terms", [1, 2, 3])
@pytest.mark.parametrize("grid", [False, True])
def test_select_equals_the_plain_greedy_pick_bit_for_bit(terms: int, grid: bool) -> None:
    w = gaussian(30_000, seed=terms)
    if grid:  # many exact ties in distance, weights exactly at centres and at +-gamma0
        w = torch.round(w * 256) / 256
    mags = centre_magnitudes(float(w.abs().max()), 0.05, terms, GAMMA0, w.device)
    for needed in (100, 9_000, 30_000):
        got = _select(w, mags, 0.05, GAMMA0, needed)
        want = _select_plain(w, mags, 0.05, GAMMA0, needed)
        assert torch.equal(got[0], want[0])
        # Bit patterns: a weight fixed to zero gets +0, as the plain where gives.
        assert torch.equal(got[1].view(torch.int32), want[1].view(torch.int32))


def _free_layers(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor], Any]:
    torch.manual_seed(0)
    centres = torch.tensor([-0.25, -0.125, -4 * GAMMA0, 0.0, 2**-5, 0.0625, 0.125, 0.5])
    centres = centres.to(dtype)
    ws = [torch.randn(30, 40, dtype=dtype) * 0.1, torch.randn(7, 9, dtype=dtype) * 0.1]
    idx = [torch.randperm(1200)[:800], torch.randperm(63)[:50]]
    pairs = [bracket(w.reshape(-1)[i], centres) for w, i in zip(ws, idx, strict=True)]
    lo, hi = [p[0] for p in pairs], [p[1] for p in pairs]
    with torch.no_grad():
        flat = ws[0].view(-1)
        flat[idx[0][:3]] = torch.cat(lo)[:3]  # exactly at a centre
        flat[idx[0][3]], flat[idx[0][4]], flat[idx[0][5]] = GAMMA0, -GAMMA0, 0.0
        for w in ws:
            w.add_(torch.randn_like(w) * 3e-3)  # some leave their bracket
    return ws, idx, (torch.cat(lo), torch.cat(hi))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_soft_distance_sum_and_gradient_equal_autograd_of_the_expression(
    dtype: torch.dtype,
) -> None:
    ws, idx, (c_lo, c_hi) = _free_layers(dtype)
    a = [w.clone().requires_grad_(True) for w in ws]
    b = [w.clone().requires_grad_(True) for w in ws]
    free = torch.cat([w.reshape(-1)[i] for w, i in zip(a, idx, strict=True)])
    plain = soft_relative_distance(free, c_lo, c_hi, 0.05, GAMMA0).sum()
    fast = _SoftDistanceSum.apply(c_lo, c_hi, 0.05, GAMMA0, *idx, *b)
    plain.backward()
    fast.backward()
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert float(fast) == pytest.approx(float(plain), rel=rtol)
    for ga, gb in zip(a, b, strict=True):
        assert ga.grad is not None and gb.grad is not None
        scale = float(ga.grad.abs().max())
        assert torch.allclose(gb.grad, ga.grad, rtol=rtol, atol=rtol * scale)


def test_soft_distance_sum_passes_gradcheck() -> None:
    ws, idx, (c_lo, c_hi) = _free_layers(torch.float64)
    inputs = tuple(w.detach().clone().requires_grad_(True) for w in ws)
    assert torch.autograd.gradcheck(
        lambda x, y: _SoftDistanceSum.apply(c_lo, c_hi, 0.05, GAMMA0, *idx, x, y), inputs
    )


def test_regularizer_of_zero_distance_is_a_zero_term_with_zero_gradient() -> None:
    # Every free weight below gamma0: distance 0, decided on the device (no NaN from 0/0).
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=0))
    model = strategy.prepare(TinyNet())
    with torch.no_grad():
        for _, latent, p in strategy_layers(model):
            latent.copy_(torch.where(p.fixed, latent, latent * 0 + GAMMA0 / 4))
    strategy._brackets = None
    x, y = tiny_data()
    loss = F.cross_entropy(model(x), y)
    reg = strategy.regularizer(model, loss)
    assert reg is not None and float(reg) == 0.0
    reg.backward()
    for _, latent, _ in strategy_layers(model):
        assert latent.grad is not None and bool((latent.grad == 0).all())


def test_fixed_weights_stay_exact_under_the_trials_fused_adam() -> None:
    torch.manual_seed(0)
    strategy = WeightFixing(WeightFixing.Params(pretrain_epochs=0))
    model = strategy.prepare(TinyNet())
    opt = build_optimizer(
        strategy.param_groups(model), OptimizerConfig(name="adam", lr=0.05, grad_clip=0.5)
    )
    before = [(p.fixed.clone(), p.value.clone()) for _, _, p in strategy_layers(model)]
    x, y = tiny_data()
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        reg = strategy.regularizer(model, loss)
        opt.zero_grad()
        (loss if reg is None else loss + reg).backward()
        opt.step()
    after = [layer.weight.detach() for _, layer, _ in parametrizations(model, _Fixable)]
    assert all(torch.equal(w[m], v[m]) for (m, v), w in zip(before, after, strict=True))


def strategy_layers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor, _Fixable]]:
    from strategies.weight_fixing import _fixables

    return _fixables(model)
