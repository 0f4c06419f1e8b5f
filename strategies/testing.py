"""The strategy contract suite: the checks every strategy must pass, built-in or a plugin's.

A leaderboard ranks strategies by the cost of their exported weights, so the suite checks what
that cost relies on: every layer is exported; the declared bits hold the codes; the codes with
the declared scale, offset or codebook decode to the exported weights exactly; every stored
float is counted; the model in eval mode computes with the exported weights; the strategy's own
parameters train; exports are deterministic, leave the model alone, and hold finite float32.

Use it from a plugin's own tests (it needs pytest: `pip install bitsweep[test]`)::

    from strategies.testing import StrategyContract

    class TestMyStrategy(StrategyContract):
        strategy_name = "my_strategy"      # a registered name
        params = {"bits": 3}               # optional: fixed params of every point checked

Every check runs at several points of the strategy's search space: its defaults, each searched
field at the low and the high end of its range, and random points drawn through the same
relation-aware sampling (`strategies.space.sample_point`) a sweep's Optuna search uses.
`run_contract(cls)` runs the same checks without pytest and returns the failures. Imports no
runner, and neither Optuna, Ray nor MLflow.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from strategies.base import Progress, Strategy
from strategies.exported import ExportedLayer
from strategies.layers import latent_weight, plain_copy, quantizable_layers, weight_of
from strategies.metrics import value_histogram, weight_metrics
from strategies.params import Search
from strategies.registry import get_strategy
from strategies.space import (
    SpaceError,
    check_search,
    default_search,
    field_kind,
    random_suggest,
    sample_point,
    searchable_fields,
)


class ContractFailure(AssertionError):
    """A strategy broke the contract: the message names the check, the point, the layer and
    the numbers."""


class TinyNet(nn.Module):
    """A conv layer, BatchNorm, and two linear layers: every kind of layer a strategy meets."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def tiny_data(seed: int = 0, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable toy problem: the class is the quadrant holding the brightest pixel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.1
    y = torch.randint(0, 4, (n,), generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, 0, r * 4 : r * 4 + 4, q * 4 : q * 4 + 4] += 1.0
    return x, y


def short_training(
    cls: type[Strategy], params: dict[str, Any], seed: int, steps: int = 6, epochs: int = 2
) -> tuple[Strategy, nn.Module]:
    """Train TinyNet for a few steps through every hook, the way the trial runner calls them."""
    case = _train(cls, params, seed, steps=steps, epochs=epochs)
    return case.strategy, case.model


# -- the points checked ---------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """Params of the strategy at which the checks run, with a label for failure messages."""

    label: str
    params: dict[str, Any]

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in sorted(self.params.items())) or "defaults"
        return f"{self.label} ({shown})"


def contract_points(
    cls: type[Strategy], fixed: dict[str, Any] | None = None, *, samples: int = 2, seed: int = 0
) -> list[Point]:
    """The defaults, each searched param at both ends of its range, and `samples` random points
    (seeded by `seed`).

    Only the strategy's own params are varied (training knobs do not change what a strategy
    deploys). Ranges are narrowed by the Params' relations, as in a sweep.
    """
    fixed = dict(fixed or {})
    space = {k: s for k, s in default_search(cls.Params).items() if k not in fixed}
    points = [Point("defaults", fixed)]
    fields = searchable_fields(cls.Params)
    for name in space:
        for end in ("low", "high"):
            drawn = sample_point(cls.Params, space, fixed, _end_suggest(name, end, fields))
            only = {k: v for k, v in drawn.items() if k == name or _moved(cls, k, v)}
            points.append(Point(f"{name} at the {end} end", {**fixed, **only}))
    rng = random.Random(seed)
    for i in range(samples if space else 0):
        drawn = sample_point(cls.Params, space, fixed, random_suggest(rng))
        points.append(Point(f"sampled point {i + 1}", {**fixed, **drawn}))
    unique: dict[str, Point] = {}
    for p in points:
        unique.setdefault(repr(sorted(p.params.items())), p)
    return list(unique.values())


def _moved(cls: type[Strategy], name: str, value: Any) -> bool:
    """Whether `value` differs from the field's default (kept so the point stays valid)."""
    info = cls.Params.model_fields[name]
    return info.is_required() or info.get_default(call_default_factory=True) != value


def _end_suggest(
    target: str, end: str, fields: dict[str, Any]
) -> Callable[[str, Search, str], Any]:
    def suggest(name: str, search: Search, kind: str) -> Any:
        if search.choices is not None:
            choices = list(search.choices)
            if name == target:
                return choices[0] if end == "low" else choices[-1]
            default = fields[name].get_default(call_default_factory=True)
            return default if default in choices else choices[0]
        assert search.low is not None and search.high is not None
        cast: Callable[[float], Any] = int if kind == "int" else float
        if name == target:
            return cast(search.low if end == "low" else search.high)
        default = fields[name].get_default(call_default_factory=True)
        if isinstance(default, (int, float)) and search.low <= default <= search.high:
            return default
        return cast(search.low)

    return suggest


# -- one trained case -----------------------------------------------------------------------


@dataclass
class Case:
    """A strategy trained briefly at one point, with what the checks compare against."""

    point: Point
    strategy: Strategy
    model: nn.Module
    fresh: dict[str, torch.Tensor]  # every parameter right after prepare
    groups: list[dict[str, Any]]  # the optimizer's groups
    extra: dict[str, Any] = field(default_factory=dict)


def _train(
    cls: type[Strategy], params: dict[str, Any], seed: int, *, steps: int = 6, epochs: int = 2
) -> Case:
    random.seed(seed)
    torch.manual_seed(seed)
    strategy = cls(cls.Params(**params))
    model = strategy.prepare(TinyNet())
    fresh = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = strategy.param_groups(model)
    opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    x, y = tiny_data(seed)
    step = 0
    for epoch in range(epochs):
        progress = Progress(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps, lr=0.05)
        loss = torch.zeros(())
        for i in range(steps):
            xb, yb = x[i * 8 : i * 8 + 8], y[i * 8 : i * 8 + 8]
            loss = F.cross_entropy(model(xb), yb)
            reg = strategy.regularizer(model, loss)
            total = loss if reg is None else loss + reg
            opt.zero_grad()
            total.backward()
            opt.step()
            step += 1
            progress.step = step
            strategy.on_step(model, progress)
        progress.loss = float(loss.detach())
        if strategy.on_epoch_end(model, progress):
            groups = strategy.param_groups(model)
            opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    return Case(Point("", params), strategy, model, fresh, groups)


# -- the checks -----------------------------------------------------------------------------


def _fail(check: str, case: Case, message: str) -> ContractFailure:
    return ContractFailure(f"{check} at {case.point}: {message}")


def check_every_layer_is_exported(case: Case) -> None:
    """Every Linear and Conv layer appears in `export()`: a quantized layer under its name, a
    layer left float as a 32-bit layer. A layer missing from the export would vanish from the
    cost."""
    exported = case.strategy.export(case.model)
    layers = [n for n, _ in quantizable_layers(case.model)]
    missing = [n for n in layers if n not in exported]
    unknown = sorted(set(exported) - set(layers))
    if missing:
        raise _fail(
            "every layer is exported", case, f"layers {missing} are missing from the export"
        )
    if unknown:
        raise _fail("every layer is exported", case, f"the export names no layer {unknown}")


def check_exported_tensors(case: Case) -> None:
    """Each exported weight is a detached float32 tensor of its layer's shape, finite, with
    0 < bits <= 32 and a whole number of stored floats; a layer without codes takes no more
    distinct values than its bits hold."""
    name_check = "exported tensors"
    shapes = {n: tuple(weight_of(m).shape) for n, m in quantizable_layers(case.model)}
    for name, layer in case.strategy.export(case.model).items():
        if not isinstance(layer, ExportedLayer):
            raise _fail(
                name_check, case, f"layer {name}: {type(layer).__name__} is no ExportedLayer"
            )
        w = layer.weight
        if w.dtype != torch.float32:
            raise _fail(name_check, case, f"layer {name}: weight is {w.dtype}, not float32")
        if w.requires_grad or w.grad_fn is not None:
            raise _fail(name_check, case, f"layer {name}: weight is not detached")
        if name in shapes and tuple(w.shape) != shapes[name]:
            raise _fail(
                name_check,
                case,
                f"layer {name}: weight shape {tuple(w.shape)}, layer {shapes[name]}",
            )
        bad = int((~torch.isfinite(w)).sum())
        if bad:
            raise _fail(name_check, case, f"layer {name}: {bad} weights are NaN or inf")
        if not 0 < layer.bits <= 32:
            raise _fail(name_check, case, f"layer {name}: declared {_n_bits(layer.bits)}")
        if int(layer.n_floats) != layer.n_floats or layer.n_floats < 0:
            raise _fail(name_check, case, f"layer {name}: n_floats = {layer.n_floats}")
        if layer.codes is None and layer.bits < 32:
            levels = int(torch.unique(w).numel())
            if levels > 2 ** int(layer.bits):
                raise _fail(
                    name_check,
                    case,
                    f"layer {name}: declared {_n_bits(layer.bits)} "
                    f"hold{'s' if layer.bits == 1 else ''} {2 ** int(layer.bits)} values, "
                    f"but the weights take {levels}",
                )


def check_codes_fit_declared_bits(case: Case) -> None:
    """The codes are integers of the weight's shape, and every code fits the declared bits in
    the declared encoding (unsigned, two's complement, sign-magnitude; a codebook index)."""
    name_check = "codes fit the declared bits"
    for name, layer in case.strategy.export(case.model).items():
        codes = layer.codes
        if codes is None:
            continue
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise _fail(name_check, case, f"layer {name}: codes are {codes.dtype}, not integers")
        if tuple(codes.shape) != tuple(layer.weight.shape):
            raise _fail(
                name_check,
                case,
                f"layer {name}: codes shape {tuple(codes.shape)}, "
                f"weight {tuple(layer.weight.shape)}",
            )
        if layer.bits != int(layer.bits):
            raise _fail(name_check, case, f"layer {name}: {layer.bits:g} bits is no whole number")
        lo, hi = layer.code_range()
        c = codes.to(torch.int64)
        cmin, cmax = int(c.min()), int(c.max())
        values = torch.unique(c)
        one_bit_signed = layer.encoding == "signed" and layer.bits == 1
        enc = "codebook index" if layer.codebook is not None else layer.encoding
        if cmin < lo or cmax > hi or (one_bit_signed and (c == 0).any()):
            allowed = "-1 and +1" if one_bit_signed else f"{lo}..{hi}"
            need, need_enc = bits_needed(values)
            raise _fail(
                name_check,
                case,
                f"layer {name}: declared {_n_bits(layer.bits)} ({enc}) holds codes {allowed}, "
                f"but codes span {cmin}..{cmax} ({values.numel()} values; they need "
                f"{_n_bits(need)} {need_enc})",
            )
        if layer.codebook is not None and cmax >= layer.codebook.numel():
            raise _fail(
                name_check,
                case,
                f"layer {name}: code {cmax} indexes past the "
                f"{layer.codebook.numel()}-entry codebook",
            )


def bits_needed(codes: torch.Tensor) -> tuple[int, str]:
    """The fewest bits that hold these integer codes, and the encoding that holds them in
    that many: unsigned when none is negative, two's complement otherwise (at 1 bit, -1 and
    +1 as `ExportedLayer` reads one signed bit)."""
    c = codes.to(torch.int64)
    cmin, cmax = int(c.min()), int(c.max())
    if cmin >= 0:
        return max(1, cmax.bit_length()), "unsigned"
    if not bool((c == 0).any()) and cmin == -1 and cmax <= 1:
        return 1, "signed (-1 and +1)"
    # Two's complement in b bits holds -2^(b-1) .. 2^(b-1) - 1.
    return max((-cmin - 1).bit_length(), cmax.bit_length()) + 1, "in two's complement"


def _n_bits(bits: float) -> str:
    return f"{bits:g} bit" if bits == 1 else f"{bits:g} bits"


def check_codes_decode_to_weights(case: Case) -> None:
    """`codes` with the declared scale, offset or codebook reproduce the exported weight
    exactly (`ExportedLayer.decode()`)."""
    for name, layer in case.strategy.export(case.model).items():
        if layer.codes is None:
            continue
        decoded = layer.decode().to(layer.weight.device)
        if decoded.shape != layer.weight.shape or not torch.equal(decoded, layer.weight):
            diff = (decoded.reshape(-1) - layer.weight.reshape(-1)).abs()
            raise _fail(
                "codes decode to the weights",
                case,
                f"layer {name}: {int((diff > 0).sum())} of {diff.numel()} weights differ from "
                f"their decoded codes (largest difference {float(diff.max()):.3g}; scale "
                f"{layer.scale}, offset {layer.offset}, codebook "
                f"{'none' if layer.codebook is None else layer.codebook.numel()})",
            )


def check_stored_floats_are_counted(case: Case) -> None:
    """A layer counts every float it stores: its scale, its offset, its codebook entries."""
    for name, layer in case.strategy.export(case.model).items():
        need = layer.stored_floats()
        if layer.n_floats < need:
            parts = [p for p, on in (("a scale", layer.scale), ("an offset", layer.offset)) if on]
            if layer.codebook is not None:
                parts.append(f"a {layer.codebook.numel()}-entry codebook")
            raise _fail(
                "stored floats are counted",
                case,
                f"layer {name}: declares {' and '.join(parts)} ({need} floats) but counts "
                f"n_floats = {layer.n_floats}",
            )


def check_eval_model_computes_with_exported_weights(case: Case) -> None:
    """The model in eval mode and a plain copy carrying the exported weights give the same
    outputs: the network evaluated and ranked is the one deployed."""
    model, strategy = case.model, case.strategy
    x, _ = tiny_data(5)
    was = model.training
    exported = strategy.export(model)
    plain = plain_copy(model, exported).eval()
    deployed = strategy.deploy(model).eval()
    model.eval()
    try:
        with torch.no_grad():
            out, ref, dep = model(x), plain(x), deployed(x)
    finally:
        model.train(was)
    for what, other in (("a plain copy with the exported weights", ref), ("deploy()", dep)):
        if not torch.isfinite(other).all() or not torch.isfinite(out).all():
            raise _fail("eval model is the deployed one", case, "outputs hold NaN or inf")
        if not torch.allclose(out, other, rtol=1e-4, atol=1e-5):
            gap = float((out - other).abs().max())
            raise _fail(
                "eval model is the deployed one",
                case,
                f"the model in eval mode and {what} differ by up to {gap:.3g} in output",
            )


def _added_trainable(case: Case) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters the strategy added to the model (in its weight transforms)."""
    return [
        (n, p)
        for n, p in case.model.named_parameters()
        if p.requires_grad and ".parametrizations." in f".{n}" and not n.endswith(".original")
    ]


def check_strategy_parameters_train(case: Case) -> None:
    """Every trainable parameter the strategy adds (latent bit planes, step sizes, continuous
    bit-depths) is given to the optimizer and moves in training."""
    given = {id(p) for g in case.groups for p in g["params"]}
    for name, p in _added_trainable(case):
        if id(p) not in given:
            raise _fail(
                "strategy parameters train", case, f"{name} is trainable but not in param_groups"
            )
        if name in case.fresh and torch.equal(case.fresh[name], p.detach()):
            raise _fail(
                "strategy parameters train",
                case,
                f"{name} ({p.numel()} values) did not move in {12} optimizer steps: it gets no "
                "gradient",
            )


def check_loss_gradient_reaches_latents(case: Case) -> None:
    """The task loss alone (no regularizer) sends a gradient to each layer's trainable latent
    weight and to the trainable parameters of its transform."""
    cls = type(case.strategy)
    torch.manual_seed(0)
    strategy = cls(case.strategy.params)
    model = strategy.prepare(TinyNet())
    x, y = tiny_data()
    F.cross_entropy(model(x[:32]), y[:32]).backward()
    names = dict(model.named_parameters())
    for lname, layer in quantizable_layers(model):
        latent = latent_weight(layer)
        targets = [(f"{lname} latent weight", latent)] if latent.requires_grad else []
        prefix = f"{lname}.parametrizations." if lname else "parametrizations."
        targets += [
            (n, p)
            for n, p in names.items()
            if n.startswith(prefix) and p.requires_grad and not n.endswith(".original")
        ]
        for what, p in targets:
            if p.grad is None or not bool((p.grad != 0).any()):
                raise _fail(
                    "loss gradient reaches the latents",
                    case,
                    f"{what}: the task loss's gradient is {'None' if p.grad is None else 'zero'}",
                )


def check_export_is_deterministic(case: Case) -> None:
    """Exporting twice gives the same layers, and so does training again with the same seed."""
    a = case.strategy.export(case.model)
    b = case.strategy.export(case.model)
    _same_exports("export twice", case, a, b)
    again = _train(type(case.strategy), case.point.params, seed=0)
    _same_exports("train again with the same seed", case, a, again.strategy.export(again.model))


def _same_exports(
    what: str, case: Case, a: dict[str, ExportedLayer], b: dict[str, ExportedLayer]
) -> None:
    if set(a) != set(b):
        raise _fail("export is deterministic", case, f"{what}: layers {sorted(set(a) ^ set(b))}")
    for name in a:
        x, y = a[name], b[name]
        for attr in ("weight", "codes", "codebook"):
            u, v = getattr(x, attr), getattr(y, attr)
            if (u is None) != (v is None) or (u is not None and not torch.equal(u, v)):
                raise _fail("export is deterministic", case, f"{what}: layer {name} {attr} differs")
        for attr in ("bits", "n_floats", "scale", "offset", "encoding"):
            if getattr(x, attr) != getattr(y, attr):
                raise _fail(
                    "export is deterministic",
                    case,
                    f"{what}: layer {name} {attr} {getattr(x, attr)} != {getattr(y, attr)}",
                )


def check_export_leaves_the_model_alone(case: Case) -> None:
    """`export()` and `deploy()` change no tensor, gradient flag or mode of the model."""
    model = case.model
    state = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    case.strategy.export(model)
    case.strategy.deploy(model)
    after = model.state_dict()
    changed = [k for k in state if k not in after or not torch.equal(state[k], after[k])]
    if changed:
        raise _fail("export leaves the model alone", case, f"export changed {changed[:5]}")
    if flags != {n: p.requires_grad for n, p in model.named_parameters()}:
        raise _fail("export leaves the model alone", case, "export changed requires_grad flags")
    if modes != {n: m.training for n, m in model.named_modules()}:
        raise _fail("export leaves the model alone", case, "export changed train/eval modes")


def check_outputs_are_finite(case: Case) -> None:
    """The trained model's outputs and loss, in train and eval mode, hold no NaN or inf."""
    x, y = tiny_data(1)
    was = case.model.training
    try:
        for mode in (True, False):
            case.model.train(mode)
            with torch.no_grad():
                loss = F.cross_entropy(case.model(x), y)
            if not torch.isfinite(loss):
                raise _fail("outputs are finite", case, f"loss is {float(loss)} (train={mode})")
    finally:
        case.model.train(was)


def check_metrics_come_from_the_export(case: Case) -> None:
    """The weight metrics count the exported values: unique values, sparsity, and bits as
    numel * bits + 32 * n_floats per layer."""
    exported = case.strategy.export(case.model)
    m = weight_metrics(exported)
    values = torch.cat([layer.weight.reshape(-1) for layer in exported.values()])
    uniq, _ = value_histogram(values)
    bits = sum(lay.weight.numel() * lay.bits + 32 * lay.n_floats for lay in exported.values())
    if m.unique_weights != uniq.numel() or not math.isclose(m.weight_bits, bits):
        raise _fail("metrics come from the export", case, f"{m.unique_weights} vs {uniq.numel()}")


def check_state_dict_round_trips(case: Case) -> None:
    """A fresh strategy loaded with the state of a trained one exports the same weights."""
    cls = type(case.strategy)
    fresh = cls(case.strategy.params)
    fresh_model = fresh.prepare(TinyNet())
    fresh.load_state_dict(copy.deepcopy(case.strategy.state_dict()))
    fresh_model.load_state_dict(case.model.state_dict())
    a, b = case.strategy.export(case.model), fresh.export(fresh_model)
    _same_exports("restore from state_dict", case, a, b)


CHECKS: tuple[Callable[[Case], None], ...] = (
    check_every_layer_is_exported,
    check_exported_tensors,
    check_codes_fit_declared_bits,
    check_codes_decode_to_weights,
    check_stored_floats_are_counted,
    check_eval_model_computes_with_exported_weights,
    check_strategy_parameters_train,
    check_loss_gradient_reaches_latents,
    check_export_is_deterministic,
    check_export_leaves_the_model_alone,
    check_outputs_are_finite,
    check_metrics_come_from_the_export,
    check_state_dict_round_trips,
)


def cases(cls: type[Strategy], points: list[Point]) -> Iterator[Case]:
    """Each point trained briefly (seed 0)."""
    for point in points:
        case = _train(cls, point.params, seed=0)
        case.point = point
        yield case


def run_contract(
    cls: type[Strategy],
    params: dict[str, Any] | None = None,
    *,
    points: list[Point] | None = None,
    checks: tuple[Callable[[Case], None], ...] = CHECKS,
) -> list[str]:
    """Every check at every point; the failure messages (empty when the strategy passes).

    A point whose training raises is itself a failure.
    """
    failures: list[str] = []
    try:
        points = points if points is not None else contract_points(cls, params)
    except SpaceError as e:
        return [f"search space: {e}"]
    for point in points:
        try:
            case = next(cases(cls, [point]))
        except Exception as e:
            failures.append(f"training at {point}: {type(e).__name__}: {e}")
            continue
        for check in checks:
            try:
                check(case)
            except ContractFailure as e:
                failures.append(str(e))
            except Exception as e:
                failures.append(f"{check.__name__} at {point}: {type(e).__name__}: {e}")
    return failures


# -- the pytest suite -----------------------------------------------------------------------

_CASES: dict[tuple[type[Strategy], str], list[Case]] = {}


class StrategyContract:
    """Checks that hold for every strategy. Set `strategy_name` (and optionally `params`)."""

    strategy_name: ClassVar[str] = ""
    params: ClassVar[dict[str, Any]] = {}

    @pytest.fixture
    def cls(self) -> type[Strategy]:
        assert self.strategy_name, "set strategy_name on the contract subclass"
        return get_strategy(self.strategy_name)

    @pytest.fixture
    def contract_cases(self, cls: type[Strategy]) -> list[Case]:
        key = (cls, repr(sorted(self.params.items())))
        if key not in _CASES:
            _CASES[key] = list(cases(cls, contract_points(cls, self.params)))
        return _CASES[key]

    @pytest.fixture
    def trained(self, contract_cases: list[Case]) -> tuple[Strategy, nn.Module]:
        return contract_cases[0].strategy, contract_cases[0].model

    def test_describes_itself(self, cls: type[Strategy]) -> None:
        d = cls.describe()
        assert d["name"] == self.strategy_name and d["paper"] and d["summary"] and d["fidelity"]

    def test_default_params_validate(self, cls: type[Strategy]) -> None:
        assert isinstance(cls.Params(**self.params), cls.Params)

    def test_search_ranges_lie_inside_bounds(self, cls: type[Strategy]) -> None:
        fields = searchable_fields(cls.Params)
        for name, search in {**cls.recipe.search, **default_search(cls.Params)}.items():
            assert name in fields, f"search range for unknown field {name!r}"
            check_search(name, search, fields[name])

    def test_points_cover_the_search_space(
        self, cls: type[Strategy], contract_cases: list[Case]
    ) -> None:
        searched = [n for n in default_search(cls.Params) if n not in self.params]
        assert len(contract_cases) >= min(3, 1 + 2 * len(searched)), [
            str(c.point) for c in contract_cases
        ]
        for name in searched:
            if field_kind(cls.Params.model_fields[name]) in ("int", "float"):
                values = {c.point.params.get(name) for c in contract_cases}
                assert len(values) >= 2, f"{name} was checked at one value only"

    def test_prepare_keeps_layer_types(self, cls: type[Strategy]) -> None:
        before = [type(m) for _, m in quantizable_layers(TinyNet())]
        model = cls(cls.Params(**self.params)).prepare(TinyNet())
        after = [type_before_parametrizations(m) for _, m in quantizable_layers(model)]
        assert after == before

    def test_deploying_leaves_the_trained_model_working(
        self, trained: tuple[Strategy, nn.Module]
    ) -> None:
        strategy, model = trained
        x, _ = tiny_data(2)
        before = model(x).detach()
        deployed = strategy.deploy(model)
        assert all(type(m).__name__.find("Parametrized") < 0 for m in deployed.modules())
        assert torch.equal(model(x).detach(), before)

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
    def test_contract(self, check: Callable[[Case], None], contract_cases: list[Case]) -> None:
        for case in contract_cases:
            check(case)
