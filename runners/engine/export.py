"""Deployed weights as safetensors files, in two formats.

- **packed** (`bitsweep.packed/1`, the default): what a deployment stores. Each layer's codes
  bit-packed at its bit-depth (1-bit layers 8 to a byte), its stored floats (scale, offset,
  codebook) as float32, a float layer as float32; then the rest of the model's state (biases,
  BatchNorm) as float32, and metadata naming the strategy, its params, the model and each
  layer's bit-depth and encoding. `load_deployed` rebuilds the float model from it.
- **unpacked** (`bitsweep.weights/1`, for inspection): each layer's exact float weights and
  its integer codes as they are.

Both are read by `load_weights`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from strategies.exported import Encoding, ExportedLayer

if TYPE_CHECKING:
    from runners.engine.data import Dataset

FORMAT = "bitsweep.weights/1"
PACKED_FORMAT = "bitsweep.packed/1"
CODES_SUFFIX = ":codes"
PACKED_SUFFIX = ":packed"
FLOATS_SUFFIX = ":floats"
STATE_PREFIX = "state."


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds the float model: the name, the options, and the data's shapes."""

    name: str
    options: dict[str, Any]
    defaults: dict[str, Any]
    input_shape: tuple[int, ...]
    num_classes: int
    # How the inputs were standardized in training (`Dataset.standardization`): shape, mean,
    # std. None: the model takes standardized inputs.
    standardization: dict[str, list[Any]] | None = None


# -- bit packing ------------------------------------------------------------------------------


def pattern(layer: ExportedLayer) -> np.ndarray:
    """The codes as unsigned `bits`-bit patterns (uint64): two's complement for signed codes,
    bit 1 for +1 at one signed bit."""
    assert layer.codes is not None
    c = layer.codes.detach().cpu().to(torch.int64).numpy().reshape(-1)
    bits = int(layer.bits)
    if layer.encoding == "signed" and layer.codebook is None:
        if bits == 1:
            return (c > 0).astype(np.uint64)
        c = c & ((1 << bits) - 1)
    return c.astype(np.uint64)


def pack(patterns: np.ndarray, bits: int) -> np.ndarray:
    """`bits` bits per pattern, most significant first, packed 8 to a byte (uint8)."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    planes = ((patterns[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(planes.reshape(-1))


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The `count` patterns of `bits` bits that `pack` wrote (uint64)."""
    planes = np.unpackbits(packed, count=count * bits).reshape(count, bits).astype(np.uint64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    return (planes << shifts).sum(axis=1, dtype=np.uint64)


def _codes_from_patterns(p: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    bits = int(meta["bits"])
    c = p.astype(np.int64)
    if meta["encoding"] == "signed" and not meta["codebook"]:
        c = (
            np.where(c > 0, 1, -1)
            if bits == 1
            else np.where(c >= 1 << (bits - 1), c - (1 << bits), c)
        )
    return torch.from_numpy(c).reshape(meta["shape"])


def _decode(layer_codes: torch.Tensor, floats: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    i = 0
    scale = offset = None
    if meta["scale"]:
        scale, i = float(floats[i]), i + 1
    if meta["offset"]:
        offset, i = float(floats[i]), i + 1
    book = floats[i : i + meta["codebook"]] if meta["codebook"] else None
    layer = ExportedLayer(
        weight=torch.empty(0),
        bits=meta["bits"],
        codes=layer_codes,
        scale=scale,
        offset=offset,
        codebook=book,
        encoding=meta["encoding"],
    )
    return layer.decode()


# -- writing ----------------------------------------------------------------------------------


def save_weights(
    path: Path,
    layers: dict[str, ExportedLayer],
    *,
    strategy: str,
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
    model: nn.Module | None = None,
    model_spec: ModelSpec | None = None,
    packed: bool = True,
) -> int:
    """Write `layers` to `path`; returns the bytes of the weights' own payload.

    Packed (the default) needs the deployed float `model` (its other state is stored too) and
    the `model_spec` that rebuilds it; unpacked writes each layer's float weights and codes.
    """
    tensors: dict[str, torch.Tensor] = {}
    meta_layers: dict[str, Any] = {}
    payload = 0
    for name, layer in layers.items():
        info = {k: v for k, v in layer.info.items() if isinstance(v, (int, float, str, bool, list))}
        meta: dict[str, Any] = {
            "bits": layer.bits,
            "n_floats": layer.n_floats,
            "scale": layer.scale,
            "shape": list(layer.weight.shape),
            **info,
        }
        if packed and layer.codes is not None and layer.bits == int(layer.bits):
            floats = [x for x in (layer.scale, layer.offset) if x is not None]
            book = [] if layer.codebook is None else layer.codebook.reshape(-1).tolist()
            tensors[name + PACKED_SUFFIX] = torch.from_numpy(pack(pattern(layer), int(layer.bits)))
            tensors[name + FLOATS_SUFFIX] = torch.tensor(floats + book, dtype=torch.float32)
            meta.update(
                scale=layer.scale is not None,
                offset=layer.offset is not None,
                codebook=len(book),
                encoding=layer.encoding,
                numel=int(layer.weight.numel()),
            )
            # Floats the layer declares beyond these (BitNet counts its float biases) are
            # stored with the model's other state below, and counted here.
            stored = max(int(layer.n_floats), len(floats + book))
            payload += tensors[name + PACKED_SUFFIX].numel() + 4 * stored
        else:
            tensors[name] = layer.weight.detach().to("cpu", torch.float32).contiguous()
            payload += 4 * layer.weight.numel()
            if not packed and layer.codes is not None:
                tensors[name + CODES_SUFFIX] = layer.codes.detach().cpu().contiguous()
        meta_layers[name] = meta
    metadata = {
        "format": PACKED_FORMAT if packed else FORMAT,
        "strategy": strategy,
        "params": json.dumps(params, sort_keys=True),
        "layers": json.dumps(meta_layers, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    if packed:
        if model is None or model_spec is None:
            raise ValueError("a packed export needs the deployed model and its model_spec")
        quantized = {f"{n}.weight" for n in layers}
        for key, value in model.state_dict().items():
            if key not in quantized:
                tensors[STATE_PREFIX + key] = value.detach().to("cpu").contiguous().clone()
        metadata["model"] = json.dumps(
            {
                "name": model_spec.name,
                "options": model_spec.options,
                "defaults": model_spec.defaults,
                "input_shape": list(model_spec.input_shape),
                "num_classes": model_spec.num_classes,
                **(
                    {"standardization": model_spec.standardization}
                    if model_spec.standardization is not None
                    else {}
                ),
            },
            sort_keys=True,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    _normal_permissions(path)
    return payload


def save_trained(path: Path, trained: Any, data: Dataset, *, packed: bool) -> int:
    """Export a finished trial (`runners.engine.trial.Trained`) trained on `data` to `path`;
    returns the payload bytes. A packed file's model keeps the data's input shape, classes and
    standardization, so that a reader can standardize raw inputs as the training split was."""
    result = trained.result
    cfg = result.config
    return save_weights(
        path,
        trained.strategy.export(trained.model),
        strategy=cfg.strategy,
        params=cfg.params,
        extra={"test_accuracy": result.test_accuracy, "dataset": cfg.dataset},
        model=trained.strategy.deploy(trained.model),
        model_spec=ModelSpec(
            name=cfg.model,
            options=dict(cfg.model_options),
            defaults=dict(type(trained.strategy).recipe.model_options),
            input_shape=data.input_shape,
            num_classes=data.num_classes,
            standardization=data.standardization,
        ),
        packed=packed,
    )


def _normal_permissions(path: Path) -> None:
    """rw for the owner, read for the rest as the umask allows (safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


# -- reading ----------------------------------------------------------------------------------


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own SafetensorError for a corrupt header
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") not in (FORMAT, PACKED_FORMAT):
        raise ValueError(f"{path}: not a bitsweep weights file (format {meta.get('format')!r})")
    return meta, tensors


def _check_packed(
    path: Path, name: str, lm: Any, packed: torch.Tensor, floats: torch.Tensor | None
) -> None:
    """Refuse a packed layer whose metadata disagrees with its bytes, before anything is
    allocated from the metadata: what is unpacked is bounded by the file's own size."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"{path}: layer {name}: {reason}")

    if not isinstance(lm, dict):
        raise bad("its metadata is not an object")
    bits, numel, shape = _whole(lm.get("bits")), _whole(lm.get("numel")), lm.get("shape")
    if bits is None or not 1 <= bits <= 64:
        raise bad(f"bits must be an integer from 1 to 64, got {lm.get('bits')!r}")
    dims = [_whole(d) for d in shape] if isinstance(shape, list) else [None]
    if any(d is None or d < 0 for d in dims):
        raise bad(f"shape must be a list of non-negative integers, got {shape!r}")
    if numel is None or numel != math.prod(d for d in dims if d is not None):
        raise bad(f"numel {lm.get('numel')!r} is not the product of its shape {shape}")
    if packed.dtype != torch.uint8 or packed.dim() != 1:
        raise bad("its packed codes are not a vector of bytes")
    if packed.numel() != (numel * bits + 7) // 8:
        raise bad(
            f"{numel} codes of {bits} bits take {(numel * bits + 7) // 8} bytes; "
            f"the file holds {packed.numel()}"
        )
    book = _whole(lm.get("codebook", 0))
    if book is None or not 0 <= book <= 2**bits:
        raise bad(f"codebook must hold 0 to 2^bits values, got {book!r}")
    if lm.get("encoding") not in get_args(Encoding):
        raise bad(
            f"encoding must be one of {', '.join(get_args(Encoding))}, got {lm.get('encoding')!r}"
        )
    wanted = int(bool(lm.get("scale"))) + int(bool(lm.get("offset"))) + book
    if floats is None or floats.dim() != 1 or floats.numel() != wanted:
        raise bad(f"it needs {wanted} stored floats; the file holds {_count(floats)}")


def _whole(v: Any) -> int | None:
    """`v` as an integer when it is one (JSON may hold 6 as 6.0), else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return int(v) if float(v).is_integer() else None


def _count(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel()


def load_weights(
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(deployed weights by layer, integer codes by layer, metadata) of a file `save_weights`
    wrote, packed or not. Raises ValueError when the file is not a bitsweep weights file, or
    its metadata disagrees with what it holds."""
    return _decoded(path, *_read(path))


def _decoded(
    path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """`load_weights` of a file already read."""
    try:
        layers = json.loads(meta["layers"])
        info = {
            "format": meta["format"],
            "strategy": meta["strategy"],
            "params": json.loads(meta["params"]),
            "layers": layers,
            "extra": json.loads(meta.get("extra", "{}")),
            "model": json.loads(meta["model"]) if "model" in meta else None,
        }
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: its metadata is incomplete or not JSON ({e})") from None
    if not isinstance(layers, dict):
        raise ValueError(f"{path}: its layers metadata is not an object")
    weights: dict[str, torch.Tensor] = {}
    codes: dict[str, torch.Tensor] = {}
    for name, lm in layers.items():
        if name + PACKED_SUFFIX in tensors:
            packed, floats = tensors[name + PACKED_SUFFIX], tensors.get(name + FLOATS_SUFFIX)
            _check_packed(path, name, lm, packed, floats)
            assert floats is not None
            p = unpack(packed.numpy(), int(lm["bits"]), int(lm["numel"]))
            codes[name] = _codes_from_patterns(p, lm)
            weights[name] = _decode(codes[name], floats, lm)
        elif name in tensors:
            weights[name] = tensors[name]
            if name + CODES_SUFFIX in tensors:
                codes[name] = tensors[name + CODES_SUFFIX]
        else:
            raise ValueError(f"{path}: layer {name} is named in the metadata but not stored")
    return weights, codes, info


def packed_model_spec(path: Path) -> ModelSpec:
    """The model a packed export rebuilds, read from the file's header alone."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        spec = json.loads(meta["model"])
        input_shape = tuple(int(d) for d in spec["input_shape"])
        return ModelSpec(
            name=str(spec["name"]),
            options=dict(spec["options"]),
            defaults=dict(spec["defaults"]),
            input_shape=input_shape,
            num_classes=int(spec["num_classes"]),
            standardization=_standardization(spec.get("standardization"), input_shape),
        )
    except Exception as e:  # a damaged header, an unpacked export, missing keys
        raise ValueError(f"{path}: no packed model in its header ({e})") from None


def _standardization(value: Any, input_shape: tuple[int, ...]) -> dict[str, list[Any]] | None:
    """A model header's standardization, checked: a shape of the input's rank whose every
    dimension is 1 or the input's (per channel, or per feature), and a finite mean and a
    positive std of as many numbers as it holds. Files written before it have none."""
    if value is None:
        return None
    shape = [int(d) for d in value["shape"]]
    mean = [float(v) for v in value["mean"]]
    std = [float(v) for v in value["std"]]
    if len(shape) != len(input_shape) or any(
        d not in (1, n) for d, n in zip(shape, input_shape, strict=True)
    ):
        raise ValueError(f"standardization of shape {shape} does not fit inputs {input_shape}")
    size = int(np.prod(shape)) if shape else 1
    if len(mean) != size or len(std) != size:
        raise ValueError(f"standardization of shape {shape} holds {len(mean)}/{len(std)} values")
    if not np.isfinite(mean).all():
        raise ValueError("standardization holds a mean that is not finite")
    if not (np.isfinite(std) & (np.asarray(std) > 0)).all():
        raise ValueError("standardization holds a std that is not a positive number")
    return {"shape": shape, "mean": mean, "std": std}


def load_deployed(path: Path) -> nn.Module:
    """The float model a packed export stands for: built by name, every tensor loaded.

    The model is first built on torch's meta device (shapes only) and every tensor it needs
    checked against the file, so that a file cannot make it build more than it holds."""
    from runners.engine.models import build_model

    meta, tensors = _read(path)
    if meta["format"] != PACKED_FORMAT:
        raise ValueError(f"{path}: an unpacked export does not hold the model; export it packed")
    weights, _, info = _decoded(path, meta, tensors)
    spec = info["model"]
    try:
        args = (
            str(spec["name"]),
            tuple(spec["input_shape"]),
            spec["num_classes"],
            spec["options"],
        )
        defaults = spec["defaults"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: its model metadata is incomplete ({e})") from None
    state = {k[len(STATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(STATE_PREFIX)}
    state.update({f"{name}.weight": w for name, w in weights.items()})
    try:
        with torch.device("meta"):
            shapes = build_model(*args, defaults=defaults).state_dict()
    except Exception as e:  # ModelError, or a model that cannot be built from these options
        raise ValueError(f"{path}: its model cannot be built ({e})") from None
    for key, want in shapes.items():
        got = state.get(key)
        if got is None or tuple(got.shape) != tuple(want.shape):
            held = None if got is None else tuple(got.shape)
            raise ValueError(
                f"{path}: the model needs {key} of shape {tuple(want.shape)}; the file holds {held}"
            )
    model = build_model(*args, defaults=defaults)
    model.load_state_dict(state, strict=True)
    return model.eval()
