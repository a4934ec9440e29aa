"""Choose the torch device: the reference's files say ``mps``, yet the same file must run on a CPU-only machine."""

from __future__ import annotations

import warnings

import torch


def available_devices() -> list[str]:
    """Devices usable here, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def pick_device(requested: str | None = None) -> torch.device:
    """``None``/``"auto"`` picks cuda → mps → cpu; an unavailable request falls back with a warning, never a crash."""
    best = available_devices()[0]
    if requested is None or requested == "auto":
        return torch.device(best)
    kind = requested.split(":", 1)[0]
    if kind in available_devices():
        return torch.device(requested)
    warnings.warn(f"device {requested!r} is not available on this machine; using {best!r}", RuntimeWarning,
                  stacklevel=2)
    return torch.device(best)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the training step for the ``precision`` hparam, None for plain float32.

    ``auto`` turns mixed precision on only on CUDA (bf16 where the GPU has it, else fp16 with a grad scaler): on a
    CPU, bf16 autocast's gain depends on the CPU's bf16 instructions and it changes the numerics of every run, so it
    stays an explicit choice (measured in docs/performance.md); MPS autocast is left off until measured."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
