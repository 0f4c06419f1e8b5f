"""Deployed weights as safetensors: one tensor per quantized layer holding the exact deployed
values, its integer codes where the strategy has them, and metadata naming the strategy, its
params and each layer's bit-depth and scale."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from strategies.base import ExportedLayer

FORMAT = "bitsweep.weights/1"
CODES_SUFFIX = ":codes"


def save_weights(
    path: Path,
    layers: dict[str, ExportedLayer],
    *,
    strategy: str,
    params: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `layers` to `path` (safetensors)."""
    tensors: dict[str, torch.Tensor] = {}
    meta_layers: dict[str, Any] = {}
    for name, layer in layers.items():
        tensors[name] = layer.weight.detach().to("cpu", torch.float32).contiguous()
        if layer.codes is not None:
            tensors[name + CODES_SUFFIX] = layer.codes.detach().cpu().contiguous()
        meta_layers[name] = {
            "bits": layer.bits,
            "n_floats": layer.n_floats,
            "scale": layer.scale,
            "shape": list(layer.weight.shape),
            **{k: v for k, v in layer.info.items() if isinstance(v, (int, float, str, bool, list))},
        }
    metadata = {
        "format": FORMAT,
        "strategy": strategy,
        "params": json.dumps(params, sort_keys=True),
        "layers": json.dumps(meta_layers, sort_keys=True),
        "extra": json.dumps(extra or {}, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)


def load_weights(
    path: Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(deployed weights by layer, integer codes by layer, metadata) of a file `save_weights` wrote.

    Raises ValueError when the file is not a bitsweep weights file.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except (OSError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    except Exception as e:  # safetensors raises its own SafetensorError for a corrupt header
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a bitsweep weights file (format {meta.get('format')!r})")
    weights = {k: v for k, v in tensors.items() if not k.endswith(CODES_SUFFIX)}
    codes = {k[: -len(CODES_SUFFIX)]: v for k, v in tensors.items() if k.endswith(CODES_SUFFIX)}
    info = {
        "strategy": meta["strategy"],
        "params": json.loads(meta["params"]),
        "layers": json.loads(meta["layers"]),
        "extra": json.loads(meta.get("extra", "{}")),
    }
    return weights, codes, info
