"""Training checkpoints in the reference's two-file layout (see docs/reference_tool.md), written atomically.

`g_%08d` holds `{"generator": state_dict}` — the same file CoverHunterMPS writes, so checkpoints move both ways.
`do_%08d` holds everything else an exact resume needs: optimizer, scheduler, step/epoch counters,
early-stopping state and the RNG states. The `g_` file is written first, so a `do_` always has its `g_`;
a pair is complete only when both exist.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from csi_model.atomic import atomic_path

GENERATOR_PREFIX = "g_"
STATE_PREFIX = "do_"
CENTRES_KEY = "_center_loss.centers"
CLASSIFIER_KEY = "_ce_layer.weight"
"""The classifier's ``[num_classes, embed_dim]`` weight: its first dimension is the number of classes."""
PARALLEL_PREFIX = "module."
"""What ``nn.DataParallel`` puts in front of every tensor name of the model it wraps."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


@dataclass(frozen=True)
class CheckpointPair:
    epoch: int
    generator: Path  # g_ file
    state: Path  # do_ file


@dataclass(frozen=True)
class LoadReport:
    path: Path
    tensors: int  # entries loaded into the model
    fingerprint: str  # model_fingerprint of the file's state dict
    ignored: tuple[str, ...]  # file entries the model deliberately does not carry


def checkpoint_paths(folder: str | Path, epoch: int) -> CheckpointPair:
    folder = Path(folder)
    return CheckpointPair(epoch, folder / f"{GENERATOR_PREFIX}{epoch:08d}", folder / f"{STATE_PREFIX}{epoch:08d}")


def model_fingerprint(state_dict: Mapping[str, Tensor]) -> str:
    """First 16 hex digits of SHA-256 over (name, shape, dtype, raw bytes) in sorted name order.

    Same recipe as the reference's, so fingerprints can be compared with its embedding files."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode("utf-8"))
        digest.update(str(tuple(tensor.shape)).encode("utf-8"))
        digest.update(str(tensor.dtype).encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG a training step may draw from, in a form `torch.load(weights_only=True)` accepts."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {**numpy_state,
                  "state": {**numpy_state["state"], "key": torch.from_numpy(numpy_state["state"]["key"])}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        state["mps"] = torch.mps.get_rng_state()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].numpy()}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "mps" in state and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def _save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(
    folder: str | Path,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    early_stopping: Mapping[str, Any],
    scheduler: Any = None,
    rng: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> CheckpointPair:
    """Write g_ then do_ for `epoch`. `rng` defaults to the current global RNG states; `extra` adds
    further resume state (e.g. a sampler's generator) under its own keys."""
    training_state = {
        "optim_g": optimizer.state_dict(),
        "steps": steps,
        "epoch": epoch,
        "early_stopping": dict(early_stopping),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "rng": dict(rng) if rng is not None else capture_rng_state(),
    }
    clashes = set(extra or {}) & set(training_state)
    if clashes:
        raise ValueError(f"extra resume state may not replace {sorted(clashes)}")
    pair = checkpoint_paths(folder, epoch)
    _save_atomic({"generator": model.state_dict()}, pair.generator)
    _save_atomic({**training_state, **(extra or {})}, pair.state)
    return pair


def checkpoint_epoch(name: str, prefix: str) -> int | None:
    """The epoch of a checkpoint file named ``name`` with ``prefix`` (``g_`` or ``do_``), else ``None``.

    The one rule for every folder of checkpoints, ours and the reference's: ``-`` and ``_`` read as ``.``, and the
    second field is the epoch (``g_00000012``, ``g_00000012.pt``); ``g_best`` or a temporary ``.g_…`` is none."""
    if not name.startswith(prefix):
        return None
    fields = name.replace("-", ".").replace("_", ".").split(".")
    epoch = fields[1] if len(fields) > 1 else ""
    return int(epoch) if epoch.isascii() and epoch.isdigit() else None


def _epoch_files(folder: Path, prefix: str) -> dict[int, Path]:
    """Epoch -> file; of two names for one epoch, the first in sorted order (``g_00000012`` before ``….pt``)."""
    files: dict[int, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        epoch = checkpoint_epoch(path.name, prefix)
        if epoch is not None and path.is_file():
            files.setdefault(epoch, path)
    return files


def state_file_for(generator: str | Path) -> Path:
    """The do_ file that belongs to a g_ file (it may not exist)."""
    generator = Path(generator)
    return generator.with_name(STATE_PREFIX + generator.name.removeprefix(GENERATOR_PREFIX))


def list_checkpoints(folder: str | Path) -> list[CheckpointPair]:
    """Complete (g_, do_) pairs, oldest epoch first; a g_ without its do_ is an interrupted save."""
    folder = Path(folder)
    generators, states = _epoch_files(folder, GENERATOR_PREFIX), _epoch_files(folder, STATE_PREFIX)
    return [CheckpointPair(e, generators[e], states[e]) for e in sorted(generators.keys() & states.keys())]


def latest_checkpoint(folder: str | Path) -> CheckpointPair | None:
    """The pair to resume from: highest epoch number (not the lexicographically last name)."""
    pairs = list_checkpoints(folder)
    return pairs[-1] if pairs else None


def latest_generator(folder: str | Path) -> Path | None:
    """The highest-epoch g_ file, with or without its do_ (inference needs only the weights; an imported
    reference training folder is read by the same rule)."""
    generators = _epoch_files(Path(folder), GENERATOR_PREFIX)
    return generators[max(generators)] if generators else None


def _load(path: Path, map_location: Any) -> Any:
    # Reference do_ files may hold numpy scalars in their early-stopping state; allow those, nothing else.
    numpy_scalars = [
        np.dtype,
        type(np.dtype(np.float64)),
        type(np.dtype(np.int64)),
        (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
        np._core.multiarray.scalar,
    ]
    try:
        with torch.serialization.safe_globals(numpy_scalars):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({error})") from error


def read_generator_state(path: str | Path, map_location: Any = "cpu") -> dict[str, Tensor]:
    """The model state dict of a g_ file (ours or CoverHunterMPS's), without a ``nn.DataParallel`` prefix."""
    path = Path(path)
    content = _load(path, map_location)
    if not isinstance(content, Mapping) or "generator" not in content:
        raise CheckpointError(f"{path}: not a generator checkpoint (no 'generator' entry)")
    try:
        return strip_parallel_prefix(content["generator"])
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None


def strip_parallel_prefix(state: Mapping[str, Tensor], prefix: str = PARALLEL_PREFIX) -> dict[str, Tensor]:
    """``state`` with a uniform ``module.`` prefix removed (a model saved while wrapped in ``nn.DataParallel``
    or ``DistributedDataParallel``); unchanged when no key has it.

    Some keys with the prefix and some without is no layout any wrapper writes: a :class:`CheckpointError`
    listing examples of both, rather than a guess that would drop or misname tensors."""
    prefixed = [k for k in state if k.startswith(prefix)]
    if not prefixed:
        return dict(state)
    plain = [k for k in state if not k.startswith(prefix)]
    if plain:
        raise CheckpointError(
            f"{len(prefixed)} of {len(state)} tensor names start with {prefix!r} and {len(plain)} do not "
            f"(e.g. {', '.join(sorted(prefixed)[:3])} but {', '.join(sorted(plain)[:3])}): "
            "a mixed prefix is not a checkpoint of one model")
    return {k[len(prefix):]: v for k, v in state.items()}


def mismatches(expected: Mapping[str, Tensor], found: Mapping[str, Tensor]) -> list[str]:
    """Human-readable lines for every missing, unexpected and wrong-shape tensor."""
    lines = [f"missing: {k} {tuple(expected[k].shape)}" for k in sorted(expected.keys() - found.keys())]
    lines += [f"unexpected: {k} {tuple(found[k].shape)}" for k in sorted(found.keys() - expected.keys())]
    lines += [
        f"wrong shape: {k} file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & found.keys())
        if found[k].shape != expected[k].shape
    ]
    return lines


def load_generator(path: str | Path, model: nn.Module, map_location: Any = "cpu") -> LoadReport:
    """Load a g_ file into `model`, exactly: any difference in names or shapes is an error naming each tensor.

    The one tolerated difference: a model built without centres ignores the file's centres (the reference
    always saves them; they only serve the center loss)."""
    path = Path(path)
    state = read_generator_state(path, map_location)
    fingerprint = model_fingerprint(state)
    expected = model.state_dict()
    ignored: tuple[str, ...] = ()
    if CENTRES_KEY in state and CENTRES_KEY not in expected and getattr(model, "centres", True) is None:
        state.pop(CENTRES_KEY)
        ignored = (CENTRES_KEY,)
    problems = mismatches(expected, state)
    if problems:
        raise CheckpointError(f"{path} does not fit the model ({len(problems)} problems):\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)
    return LoadReport(path, len(state), fingerprint, ignored)


def load_training_state(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The do_ dictionary: optim_g, steps, epoch, early_stopping, and (ours) scheduler, rng, extras."""
    path = Path(path)
    content = _load(path, map_location)
    missing = {"optim_g", "steps", "epoch"} - set(content if isinstance(content, Mapping) else ())
    if missing:
        raise CheckpointError(f"{path}: not a training-state checkpoint (missing {sorted(missing)})")
    return dict(content)


CLASS_HEAD_KEYS = (CLASSIFIER_KEY, CENTRES_KEY)
"""Tensors whose shape depends on the classes: a warm start onto other classes leaves them as initialised."""


def load_embedding_network(path: str | Path, model: nn.Module, map_location: Any = "cpu") -> LoadReport:
    """Warm start: load every tensor of a g_ file except the class heads (classifier, centres) -- e.g. a CSI model's
    embedding network under a network that learns other classes. The rest must fit exactly (errors name each
    tensor); ``fingerprint`` is that of the whole file."""
    path = Path(path)
    full = read_generator_state(path, map_location)
    state = {k: v for k, v in full.items() if k not in CLASS_HEAD_KEYS}
    expected = {k: v for k, v in model.state_dict().items() if k not in CLASS_HEAD_KEYS}
    problems = mismatches(expected, state)
    if problems:
        raise CheckpointError(f"{path}: its embedding network does not fit the model ({len(problems)} problems):"
                              "\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=False)
    return LoadReport(path, len(state), model_fingerprint(full), tuple(k for k in CLASS_HEAD_KEYS if k in full))
