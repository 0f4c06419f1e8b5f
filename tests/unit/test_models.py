"""Tests for runners.engine.models: every registered model on every dataset shape, and option
errors."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from pydantic import BaseModel
from torch import nn

from runners.engine.models import (
    ModelError,
    build_model,
    list_models,
    model_options,
    register_model,
    unregister_model,
)

MODELS = sorted(list_models())
IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
VECTOR_MODELS = {"mlp"}
NUM_CLASSES = 7  # not 10, so a hard-coded class count shows up
# Width 1 keeps the wide nets fast on CPU; everything else runs with its defaults.
FAST_OPTIONS: dict[str, dict[str, object]] = {"wrn": {"width": 1}}

WEIGHT_TYPES = (nn.Linear, nn.Conv2d)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fast(name: str, **options: object) -> dict[str, object]:
    return {**FAST_OPTIONS.get(name, {}), **options}


def check_forward_backward(model: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model.train()
    x = torch.randn(2, *shape)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES)
    # Cross-entropy rather than logits.sum(): a final non-affine BN makes the sum constant.
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, NUM_CLASSES - 1]))
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {pname}"
            assert torch.isfinite(p.grad).all(), f"non-finite gradient for {pname}"
    for mname, m in model.named_modules():
        if isinstance(m, WEIGHT_TYPES):
            assert m.weight.grad is not None and m.weight.grad.abs().sum() > 0, mname


def check_weights_in_linear_or_conv(model: nn.Module) -> None:
    assert any(isinstance(m, WEIGHT_TYPES) for m in model.modules())
    for mname, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if isinstance(m, WEIGHT_TYPES):
                continue
            # Only BatchNorm may hold parameters outside Linear/Conv2d, and only vectors.
            assert isinstance(m, NORM_TYPES), f"{mname}.{pname} lives in {type(m).__name__}"
            assert p.ndim == 1, f"{mname}.{pname}"


@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", MODELS)
def test_every_model_on_images(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(name, shape, NUM_CLASSES, fast(name))
    check_weights_in_linear_or_conv(model)
    check_forward_backward(model, shape)
    # Strategies deep-copy models to export them.
    assert copy.deepcopy(model)(torch.randn(2, *shape)).shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("name", MODELS)
def test_vector_input(name: str) -> None:
    shape = (64,)
    if name in VECTOR_MODELS:
        model = build_model(name, shape, NUM_CLASSES, fast(name))
        check_weights_in_linear_or_conv(model)
        check_forward_backward(model, shape)
    else:
        with pytest.raises(ModelError) as ei:
            build_model(name, shape, NUM_CLASSES, fast(name))
        assert ei.value.field == "model"
        assert str(ei.value) == f"model: {name} needs image input (C,H,W)"


@pytest.mark.parametrize("name", MODELS)
def test_options_class_contract(name: str) -> None:
    opts = model_options(name)
    assert issubclass(opts, BaseModel)
    assert opts.model_config.get("extra") == "forbid"
    for field, info in opts.model_fields.items():
        assert info.description, f"{name}.{field} has no description"
    opts()  # the defaults validate


@pytest.mark.parametrize("name", MODELS)
def test_bias_false_removes_every_bias(name: str) -> None:
    options = fast(name)
    if "bias" in model_options(name).model_fields:
        options["bias"] = False
    model = build_model(name, (3, 32, 32), NUM_CLASSES, options)
    for mname, m in model.named_modules():
        if isinstance(m, WEIGHT_TYPES):
            assert m.bias is None, mname


def test_list_models_sorted_and_complete() -> None:
    models = list_models()
    assert list(models) == sorted(models)
    assert {"mlp", "lenet", "conv6", "resnet20", "wrn"} <= set(models)


def test_mlp_default_is_lenet_300_100() -> None:
    model = build_model("mlp", (1, 28, 28), 10)
    sizes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert sizes == [(784, 300), (300, 100), (100, 10)]
    assert not any(isinstance(m, NORM_TYPES) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear))


def test_mlp_batch_norm_sits_between_linear_and_activation() -> None:
    model = build_model("mlp", (64,), 10, {"batch_norm": True, "activation": "tanh"})
    layers = list(model.children())
    bns = [i for i, m in enumerate(layers) if isinstance(m, nn.BatchNorm1d)]
    assert [layers[i].num_features for i in bns] == [300, 100]
    for i in bns:
        assert isinstance(layers[i - 1], nn.Linear)
        assert isinstance(layers[i + 1], nn.Tanh)
        assert layers[i].affine


def test_mlp_dropout_and_no_hidden() -> None:
    model = build_model("mlp", (64,), 3, {"hidden": [16], "dropout": 0.5})
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1
    linear = build_model("mlp", (64,), 3, {"hidden": []})
    assert [type(m) for m in linear.modules() if isinstance(m, WEIGHT_TYPES)] == [nn.Linear]


def test_lenet_structure() -> None:
    model = build_model("lenet", (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (30, (5, 5), (2, 2)),
        (50, (5, 5), (2, 2)),
    ]
    dense = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(d.in_features, d.out_features) for d in dense] == [(50 * 7 * 7, 500), (500, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 3
    bn = build_model("lenet", (1, 8, 8), 10, {"batch_norm": True, "bn_affine": False})
    norms = [m for m in bn.modules() if isinstance(m, NORM_TYPES)]
    assert len(norms) == 3 and not any(m.affine for m in norms)
    # BitNet's CIFAR-10 LeNet32: 3x3 convs of 256 and 512 filters, dense 1024.
    wide = build_model(
        "lenet", (3, 32, 32), 10, {"channels": [256, 512], "dense": 1024, "kernel": 3}
    )
    convs = [m for m in wide.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (256, (3, 3), (1, 1)),
        (512, (3, 3), (1, 1)),
    ]
    assert next(m for m in wide.modules() if isinstance(m, nn.Linear)).in_features == 512 * 8 * 8


def test_conv6_structure_and_small_inputs() -> None:
    model = build_model("conv6", (3, 32, 32), 10)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256]
    dense = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    assert dense == [(256 * 4 * 4, 256), (256, 256), (256, 10)]
    assert sum(isinstance(m, NORM_TYPES) for m in model.modules()) == 8
    # 8x8 digits: 8 -> 4 -> 2 -> 1, never 0.
    small = build_model("conv6", (1, 8, 8), 10, {"width": 0.25})
    assert next(m for m in small.modules() if isinstance(m, nn.Linear)).in_features == 64
    # A 2x2 input pools once and then stops.
    tiny = build_model("conv6", (1, 2, 2), 10, {"width": 0.25})
    assert tiny(torch.randn(2, 1, 2, 2)).shape == (2, 10)


def test_resnet20_parameter_count_and_shortcuts() -> None:
    model = build_model("resnet20", (3, 32, 32), 10)
    assert 260_000 <= n_params(model) <= 280_000
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19 and all(c.kernel_size == (3, 3) and c.bias is None for c in convs)
    assert next(m for m in model.modules() if isinstance(m, nn.Linear)).bias is not None
    b = build_model("resnet20", (3, 32, 32), 10, {"shortcut": "B"})
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in b.modules()) == 2
    deeper = build_model("resnet20", (3, 32, 32), 10, {"depth": 32, "width": 2})
    assert sum(isinstance(m, nn.Conv2d) for m in deeper.modules()) == 31
    # The bit-wise training paper's ResNet-20: no BatchNorm anywhere, bare 1x1 projections.
    bare = build_model("resnet20", (3, 32, 32), 10, {"shortcut": "B", "batch_norm": False})
    assert not any(isinstance(m, NORM_TYPES) for m in bare.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in bare.modules()) == 21
    assert n_params(bare) == n_params(b) - sum(
        p.numel() for m in b.modules() if isinstance(m, NORM_TYPES) for p in m.parameters()
    )
    assert bare(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_wrn_structure() -> None:
    model = build_model("wrn", (3, 32, 32), 10, {"depth": 20, "width": 1, "bn_affine": True})
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    one_by_one = [c for c in convs if c.kernel_size == (1, 1)]
    assert one_by_one == [convs[-1]] and convs[-1].out_channels == 10
    assert all(c.bias is None for c in convs)
    assert len(convs) == 1 + 18 + 1
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms[0].num_features == 3  # the input BN
    assert norms[-1].num_features == 10 and not norms[-1].affine
    assert all(m.affine for m in norms[:-1])
    assert not any(isinstance(m, nn.Linear) for m in model.modules())


def test_wrn_parameter_count() -> None:
    # WRN-20-1 with BN scale/offset off: 432 + 13,824 + 50,688 + 202,752 + 640 conv weights.
    model = build_model("wrn", (3, 32, 32), 10, {"depth": 20, "width": 1})
    assert n_params(model) == 268_336
    assert all(not m.affine for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    # Width k scales every conv but the 3->16k stem and the classifier by k^2.
    wide = build_model("wrn", (3, 32, 32), 10)
    assert 4_200_000 <= n_params(wide) <= 4_350_000


def test_unknown_model() -> None:
    with pytest.raises(ModelError) as ei:
        build_model("alexnet", (3, 32, 32), 10)
    assert ei.value.field == "model"
    assert "unknown model 'alexnet'" in ei.value.reason and "mlp" in ei.value.reason
    with pytest.raises(ModelError):
        model_options("alexnet")


def test_unknown_option() -> None:
    with pytest.raises(ModelError) as ei:
        build_model("mlp", (64,), 10, {"hiden": [10]})
    assert ei.value.field == "model_options.hiden"
    assert str(ei.value).startswith("model_options.hiden: ")


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("mlp", {"hidden": [0]}, "hidden"),
        ("mlp", {"hidden": [10] * 9}, "hidden"),
        ("mlp", {"activation": "gelu"}, "activation"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("lenet", {"channels": [30]}, "channels"),
        ("conv6", {"width": 0}, "width"),
        ("resnet20", {"depth": 21}, "depth"),
        ("resnet20", {"shortcut": "C"}, "shortcut"),
        ("lenet", {"kernel": 4}, "kernel"),
        ("wrn", {"width": 0}, "width"),
        ("wrn", {"depth": 22}, "depth"),
    ],
)
def test_bad_option_value(name: str, options: dict[str, object], field: str) -> None:
    with pytest.raises(ModelError) as ei:
        build_model(name, (1, 8, 8), 10, options)
    assert ei.value.field.split(".")[:2] == ["model_options", field]
    assert "\n" not in str(ei.value)
    assert str(ei.value) == f"{ei.value.field}: {ei.value.reason}"


def test_depth_error_reads_cleanly() -> None:
    with pytest.raises(ModelError) as ei:
        build_model("wrn", (1, 8, 8), 10, {"depth": 22})
    assert ei.value.reason.startswith("depth must satisfy")


def test_defaults_dropped_and_overridden() -> None:
    defaults = {"batch_norm": True, "bias": False, "bn_affine": False, "no_such_option": 3}
    model = build_model("mlp", (64,), 10, {"bias": True}, defaults=defaults)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 2 and not any(m.affine for m in norms)
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Linear))
    # wrn has neither batch_norm nor bias: the recipe's values are dropped, not refused.
    wrn = build_model("wrn", (1, 8, 8), 10, {"width": 1}, defaults=defaults)
    assert isinstance(wrn, nn.Module)
    # An unknown key from the user is still an error.
    with pytest.raises(ModelError):
        build_model("wrn", (1, 8, 8), 10, {"bias": False})


def test_bad_shapes() -> None:
    with pytest.raises(ModelError) as ei:
        build_model("mlp", (0,), 10)
    assert ei.value.field == "model"
    with pytest.raises(ModelError):
        build_model("mlp", (64,), 0)
    with pytest.raises(ModelError):
        build_model("wrn", (8, 8), 10, {"width": 1})
    with pytest.raises(ModelError):
        build_model("mlp", (64.0,), 10)  # type: ignore[arg-type]
    # A dataset's torch.Size is fine.
    model = build_model("mlp", torch.Size([1, 8, 8]), 3)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_model_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(ModelError("model_options.depth", "too deep")))
    assert (err.field, err.reason) == ("model_options.depth", "too deep")
    assert str(err) == "model_options.depth: too deep"
    assert isinstance(err, ValueError)


def test_register_model_and_duplicates() -> None:
    class TinyOptions(BaseModel):
        hidden: int = 4

    @register_model("tiny_test_model", TinyOptions)
    def tiny(input_shape: tuple[int, ...], num_classes: int, opts: TinyOptions) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))

    try:
        assert list_models()["tiny_test_model"] is TinyOptions
        model = build_model("tiny_test_model", (5,), 2, defaults={"batch_norm": True})
        assert model(torch.randn(2, 5)).shape == (2, 2)
        with pytest.raises(ValueError, match="already registered"):
            register_model("tiny_test_model", TinyOptions)(tiny)
    finally:
        unregister_model("tiny_test_model")
    assert "tiny_test_model" not in list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp", TinyOptions)(tiny)
