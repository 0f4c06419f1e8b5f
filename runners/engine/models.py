"""The model zoo: a name → (Options, builder) registry of small nets that adapt to any dataset.

Every weight lives in an `nn.Linear` or `nn.Conv2d`, so a strategy that parametrizes those
layers quantizes the whole network; BatchNorm layers stay in float.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.nn import functional as F

from schemas.errors import FieldError, validation_field

Builder = Callable[[tuple[int, ...], int, Any], nn.Module]
B = TypeVar("B", bound=Callable[..., nn.Module])

_REGISTRY: dict[str, tuple[type[BaseModel], Builder]] = {}


class ModelError(FieldError):
    """A bad model name or option: field `model` or `model_options.<key>`, and the reason."""


def register_model(name: str, options: type[BaseModel]) -> Callable[[B], B]:
    """Decorator: register a builder `(input_shape, num_classes, opts) -> nn.Module` under `name`.

    `options` is the pydantic model that validates the user's `model_options`. A duplicate
    name raises `ValueError`.
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"model name {name!r} must be letters, digits, '_' or '-'")
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        raise TypeError(f"options for model {name!r} must be a pydantic BaseModel subclass")

    def deco(builder: B) -> B:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = (options, builder)
        return builder

    return deco


def unregister_model(name: str) -> None:
    """Remove `name` from the registry (tests and interactive sessions)."""
    _REGISTRY.pop(name, None)


def list_models() -> dict[str, type[BaseModel]]:
    """Every registered model's Options class, by name, sorted."""
    return {name: _REGISTRY[name][0] for name in sorted(_REGISTRY)}


def model_options(name: str) -> type[BaseModel]:
    """The Options class of model `name`; raises `ModelError` on an unknown name."""
    try:
        return _REGISTRY[name][0]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ModelError("model", f"unknown model {name!r} (known: {known})") from None


MAX_PARAMETERS = 200_000_000  # 800 MB of float32 weights: far beyond a benchmark's models


def parameter_count(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: dict[str, Any] | None = None,
    *,
    defaults: dict[str, Any] | None = None,
) -> int:
    """The parameters model `name` would have, counted on torch's meta device (shapes only,
    no memory). Raises `ModelError` as `build_model` does, and for more than
    `MAX_PARAMETERS`."""
    with torch.device("meta"):
        model = build_model(name, input_shape, num_classes, options, defaults=defaults)
    n = sum(p.numel() for p in model.parameters())
    if n > MAX_PARAMETERS:
        raise ModelError(
            "model_options", f"the model would have {n:,} parameters; at most {MAX_PARAMETERS:,}"
        )
    return n


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    options: dict[str, Any] | None = None,
    *,
    defaults: dict[str, Any] | None = None,
) -> nn.Module:
    """Build model `name` for inputs of `input_shape` ((F,) or (C,H,W)) and `num_classes`.

    `options` come from the user: an unknown key or a bad value raises `ModelError`.
    `defaults` come from a strategy's recipe: keys this model doesn't take are dropped, and
    `options` override them.
    """
    opts_cls = model_options(name)
    try:
        # operator.index admits numpy/torch integers from a dataset's .shape, not floats.
        shape = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        raise ModelError("model", f"input_shape must be ints, got {input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise ModelError("model", f"input_shape must be positive ints, got {shape}")
    try:
        num_classes = operator.index(num_classes)
    except TypeError:
        raise ModelError("model", f"num_classes must be an int, got {num_classes!r}") from None
    if num_classes < 1:
        raise ModelError("model", f"num_classes must be positive, got {num_classes}")
    if options is not None and not isinstance(options, Mapping):
        raise ModelError("model_options", f"must be a mapping, got {type(options).__name__}")

    merged = {k: v for k, v in (defaults or {}).items() if k in opts_cls.model_fields}
    merged.update(options or {})
    try:
        opts = opts_cls.model_validate(merged)
    except ValidationError as e:
        raise _option_error(e) from None
    _, builder = _REGISTRY[name]
    return builder(shape, num_classes, opts)


def _option_error(e: ValidationError) -> ModelError:
    return ModelError(*validation_field(e, "model_options"))


# --------------------------------------------------------------------------- shared pieces


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_depth(depth: int) -> int:
    if (depth - 2) % 6:
        raise ValueError("depth must satisfy (depth - 2) % 6 == 0, e.g. 8, 14, 20, 26, 32, 56")
    return depth


# 6n+2 layers: a stem conv, 3 stages of n two-conv blocks, and the classifier.
_Depth = Annotated[int, Field(ge=8, le=200), AfterValidator(_check_depth)]


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelError("model", f"{name} needs image input (C,H,W)")
    c, h, w = input_shape
    return c, h, w


def _pool2(h: int, w: int) -> tuple[nn.Module, int, int]:
    """A 2x2 max pool that skips any dimension already below 2 (8x8 digits run out fast)."""
    kh, kw = (2 if h >= 2 else 1), (2 if w >= 2 else 1)
    if kh == kw == 1:
        return nn.Identity(), h, w
    return nn.MaxPool2d((kh, kw)), h // kh, w // kw


def _kaiming_init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _pad_channels(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    extra = out_channels - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra > 0 else x


# --------------------------------------------------------------------------- mlp

_Width = Annotated[int, Field(ge=1, le=16384)]


class MLPOptions(_Options):
    hidden: list[_Width] = Field(
        default_factory=lambda: [300, 100],
        max_length=8,
        description="Hidden layer sizes (LeNet-300-100 by default); [] gives a linear model.",
    )
    activation: Literal["relu", "tanh"] = Field("relu", description="Hidden activation.")
    batch_norm: bool = Field(
        False, description="BatchNorm1d after each hidden Linear, before the activation."
    )
    bias: bool = Field(True, description="Biases in the Linear layers.")
    bn_affine: bool = Field(True, description="Learnable BatchNorm scale and offset.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")


@register_model("mlp", MLPOptions)
def mlp(input_shape: tuple[int, ...], num_classes: int, opts: MLPOptions) -> nn.Module:
    """A fully connected net on the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 1
    for d in input_shape:
        width *= d
    for h in opts.hidden:
        layers.append(nn.Linear(width, h, bias=opts.bias))
        if opts.batch_norm:
            layers.append(nn.BatchNorm1d(h, affine=opts.bn_affine))
        layers.append(nn.ReLU() if opts.activation == "relu" else nn.Tanh())
        if opts.dropout > 0:
            layers.append(nn.Dropout(opts.dropout))
        width = h
    layers.append(nn.Linear(width, num_classes, bias=opts.bias))
    model = nn.Sequential(*layers)
    return _kaiming_init(model) if opts.activation == "relu" else model


# --------------------------------------------------------------------------- lenet


class LeNetOptions(_Options):
    channels: tuple[_Width, _Width] = Field((30, 50), description="Filters of the two convs.")
    kernel: Literal[3, 5] = Field(
        5, description="Side of the convs' kernels: 5 on MNIST, 3 in BitNet's CIFAR-10 LeNet32."
    )
    dense: _Width = Field(500, description="Units of the hidden dense layer.")
    bias: bool = Field(True, description="Biases in the Conv and Linear layers.")
    batch_norm: bool = Field(
        False, description="BatchNorm after each conv and the dense layer, before tanh."
    )
    bn_affine: bool = Field(True, description="Learnable BatchNorm scale and offset.")


@register_model("lenet", LeNetOptions)
def lenet(input_shape: tuple[int, ...], num_classes: int, opts: LeNetOptions) -> nn.Module:
    """BitNet's tanh LeNet ("LeNet32"); 'same' convs so 8x8 digits survive both pools."""
    c, h, w = _image_shape("lenet", input_shape)
    layers: list[nn.Module] = []
    for out in opts.channels:
        layers.append(nn.Conv2d(c, out, opts.kernel, padding=opts.kernel // 2, bias=opts.bias))
        if opts.batch_norm:
            layers.append(nn.BatchNorm2d(out, affine=opts.bn_affine))
        pool, h, w = _pool2(h, w)
        layers += [nn.Tanh(), pool]
        c = out
    layers += [nn.Flatten(), nn.Linear(c * h * w, opts.dense, bias=opts.bias)]
    if opts.batch_norm:
        layers.append(nn.BatchNorm1d(opts.dense, affine=opts.bn_affine))
    layers += [nn.Tanh(), nn.Linear(opts.dense, num_classes, bias=opts.bias)]
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- conv6


class Conv6Options(_Options):
    width: float = Field(
        1.0, gt=0.0, le=8.0, description="Multiplier on every conv and hidden dense width."
    )
    batch_norm: bool = Field(True, description="BatchNorm after each conv and hidden dense.")
    bias: bool = Field(False, description="Biases in the Conv and Linear layers.")
    bn_affine: bool = Field(True, description="Learnable BatchNorm scale and offset.")


@register_model("conv6", Conv6Options)
def conv6(input_shape: tuple[int, ...], num_classes: int, opts: Conv6Options) -> nn.Module:
    """Frankle & Carbin's Conv6: (2 convs, pool) x 3 with 64/128/256 filters, dense 256-256."""
    c, h, w = _image_shape("conv6", input_shape)

    def scaled(n: int) -> int:
        return max(1, round(n * opts.width))

    layers: list[nn.Module] = []
    for planes in (64, 128, 256):
        for _ in range(2):
            out = scaled(planes)
            layers.append(nn.Conv2d(c, out, 3, padding=1, bias=opts.bias))
            if opts.batch_norm:
                layers.append(nn.BatchNorm2d(out, affine=opts.bn_affine))
            layers.append(nn.ReLU())
            c = out
        pool, h, w = _pool2(h, w)
        layers.append(pool)
    layers.append(nn.Flatten())
    width = c * h * w
    for _ in range(2):
        out = scaled(256)
        layers.append(nn.Linear(width, out, bias=opts.bias))
        if opts.batch_norm:
            layers.append(nn.BatchNorm1d(out, affine=opts.bn_affine))
        layers.append(nn.ReLU())
        width = out
    layers.append(nn.Linear(width, num_classes, bias=opts.bias))
    return _kaiming_init(nn.Sequential(*layers))


# --------------------------------------------------------------------------- resnet20


class ResNetOptions(_Options):
    depth: _Depth = Field(
        20, description="Layers: 6n+2 for n basic blocks per stage (20, 32, 56, 110)."
    )
    width: int = Field(1, ge=1, le=16, description="Multiplier on the 16/32/64 stage widths.")
    shortcut: Literal["A", "B"] = Field(
        "A",
        description="A: subsample and zero-pad channels; B: 1x1 conv + BN projection.",
    )
    bias: bool = Field(True, description="Bias in the final Linear (convs never have one).")
    batch_norm: bool = Field(
        True,
        description="BatchNorm after each conv, the shortcut's 1x1 conv included; off in the "
        "bit-wise training paper's ResNet-20 (with shortcut B: a bare 1x1 projection).",
    )
    bn_affine: bool = Field(True, description="Learnable BatchNorm scale and offset.")


def _norm(channels: int, opts: ResNetOptions) -> nn.Module:
    return nn.BatchNorm2d(channels, affine=opts.bn_affine) if opts.batch_norm else nn.Identity()


class _SubsamplePad(nn.Module):
    """Option-A shortcut: parameter-free, so every weight stays in a Conv2d or Linear."""

    def __init__(self, stride: int, out_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return _pad_channels(x, self.out_channels)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, opts: ResNetOptions) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(cout, opts)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = _norm(cout, opts)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if opts.shortcut == "A":
                self.shortcut = _SubsamplePad(stride, cout)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(cout, opts)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, opts: ResNetOptions) -> None:
        super().__init__()
        n = (opts.depth - 2) // 6
        widths = [16 * opts.width, 32 * opts.width, 64 * opts.width]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = _norm(widths[0], opts)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_BasicBlock(cin, cout, stride, opts))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes, bias=opts.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.blocks(out))
        return self.fc(torch.flatten(out, 1))


@register_model("resnet20", ResNetOptions)
def resnet20(input_shape: tuple[int, ...], num_classes: int, opts: ResNetOptions) -> nn.Module:
    """He et al.'s CIFAR ResNet (6n+2 layers, 16/32/64 widths; ~0.27M parameters at depth 20)."""
    c, _, _ = _image_shape("resnet20", input_shape)
    return _kaiming_init(_ResNet(c, num_classes, opts))


# --------------------------------------------------------------------------- wrn


class WRNOptions(_Options):
    depth: _Depth = Field(20, description="Layers: 6n+2 for n pre-activation blocks per stage.")
    width: int = Field(4, ge=1, le=20, description="Widening factor k: stages of 16k/32k/64k.")
    bn_affine: bool = Field(
        False,
        description="Learnable BatchNorm scale and offset (off in the 1-bit paper); the head's "
        "final BatchNorm never has them.",
    )


class _AvgPoolPad(nn.Module):
    """The 1-bit paper's downsampling skip: 3x3/2 average pool, then zero-pad the channels."""

    def __init__(self, stride: int, out_channels: int) -> None:
        super().__init__()
        self.pool: nn.Module = (
            nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
            if stride > 1
            else nn.Identity()
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _pad_channels(self.pool(x), self.out_channels)


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, affine: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, affine=affine)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, affine=affine)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.skip: nn.Module = (
            _AvgPoolPad(stride, cout) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.skip(x)


class _WRN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, opts: WRNOptions) -> None:
        super().__init__()
        n = (opts.depth - 2) // 6
        k = opts.width
        widths = [16 * k, 32 * k, 64 * k]
        self.bn_in = nn.BatchNorm2d(in_channels, affine=opts.bn_affine)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(_PreActBlock(cin, cout, stride, opts.bn_affine))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn_out = nn.BatchNorm2d(cin, affine=opts.bn_affine)
        self.classifier = nn.Conv2d(cin, num_classes, 1, bias=False)
        # The paper's head ends in a BN with no scale or offset, whatever bn_affine says.
        self.bn_logits = nn.BatchNorm2d(num_classes, affine=False)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.conv1(self.bn_in(x)))
        out = self.bn_logits(self.classifier(F.relu(self.bn_out(out))))
        return torch.flatten(self.pool(out), 1)


@register_model("wrn", WRNOptions)
def wrn(input_shape: tuple[int, ...], num_classes: int, opts: WRNOptions) -> nn.Module:
    """McDonnell's pre-activation WRN-D-k (arXiv 1802.08530) without any 1x1 projection."""
    c, _, _ = _image_shape("wrn", input_shape)
    return _kaiming_init(_WRN(c, num_classes, opts))
