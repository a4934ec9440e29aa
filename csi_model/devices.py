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
