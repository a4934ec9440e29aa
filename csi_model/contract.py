"""A model's input contract: the CQT settings of the features it was trained on, and the one comparison of it.

A model only ever sees features computed like its training features. Features with another hop, another
lowest frequency or another bin layout still have the right shape ``[T, n_bins]`` and go through the network
without an error, but every distance changes (a stored recording queried against itself is no longer at
distance 0). So every path that feeds features to a model -- identification, reference embeddings,
evaluation, ingestion, import, training -- calls :func:`check_input_contract` first, and a mismatch is an
:class:`InputContractError` naming both values and where each comes from.

A field that is ``None`` is unknown (a model registered before contracts were recorded, or imported from the
reference tool whose CQT class depended on the machine): it cannot be checked, and
:func:`check_input_contract` says so with an :class:`InputContractWarning` instead of passing in silence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from csi_model.audio import SAMPLE_RATE
from csi_model.cqt import CqtSettings
from csi_model.hparams import TrainingHParams

CONTRACT_FIELDS = ("sample_rate", "hop", "fmin", "n_bins", "bins_per_octave", "cqt_class")


class InputContractError(ValueError):
    """Features computed with other settings than the model was trained on; names both values and sources."""


class InputContractWarning(UserWarning):
    """Part of a model's input contract is unknown, so that part of the features cannot be checked."""


@dataclass(frozen=True)
class InputContract:
    """The feature settings a model expects (or a set of features has), ``None`` where unknown.

    ``hop`` is in samples at ``sample_rate`` Hz; ``source`` says where the values come from (a file path, or
    how they were derived) and appears in every message about them."""

    source: str
    sample_rate: int | None = None
    hop: int | None = None
    fmin: float | None = None
    n_bins: int | None = None
    bins_per_octave: int | None = None
    cqt_class: str | None = None

    @classmethod
    def from_settings(cls, settings: CqtSettings, source: str) -> InputContract:
        """The complete contract of features computed with ``settings``."""
        return cls(source, **{name: getattr(settings, name) for name in CONTRACT_FIELDS})

    @classmethod
    def from_training_hparams(cls, hp: TrainingHParams, source: str,
                               sample_rate: int = SAMPLE_RATE) -> InputContract:
        """What training hparams alone say about the input: the hop and the number of bins (``input_dim``).

        They name neither ``fmin``, ``bins_per_octave`` nor the CQT class; those stay unknown."""
        return cls(source, sample_rate=sample_rate, hop=hp.hop_samples(sample_rate), n_bins=hp.input_dim)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> InputContract:
        """Inverse of :meth:`to_dict` (a stored record); unknown keys are an error, missing fields unknown."""
        extra = set(record) - {"source", *CONTRACT_FIELDS}
        if extra:
            raise ValueError(f"input contract record has unknown keys {sorted(extra)}")
        return cls(**dict(record, source=str(record.get("source", "<unknown source>"))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def unknown(self) -> list[str]:
        return [name for name in CONTRACT_FIELDS if getattr(self, name) is None]

    def describe(self, name: str) -> str:
        """One field's value as a user reads it (the hop also in seconds, as ``hparams.yaml`` gives it)."""
        value = getattr(self, name)
        if name == "hop" and value is not None and self.sample_rate:
            return f"hop_size {value / self.sample_rate:g} s ({value} samples at {self.sample_rate} Hz)"
        return f"{name} {value!r}" if name == "cqt_class" else f"{name} {value:g}"


def contract_mismatches(expected: InputContract, given: InputContract) -> list[str]:
    """Fields known on both sides whose values differ, in :data:`CONTRACT_FIELDS` order."""
    differ = []
    for name in CONTRACT_FIELDS:
        a, b = getattr(expected, name), getattr(given, name)
        if a is None or b is None:
            continue
        same = math.isclose(a, b, rel_tol=1e-9) if name == "fmin" else a == b
        if not same:
            differ.append(name)
    return differ


def check_input_contract(model: InputContract, features: InputContract, model_name: str,
                         warn_unknown: bool = True) -> None:
    """Raise :class:`InputContractError` unless ``features`` fit ``model``; warn about unknown fields.

    The message names every differing field with both values and both sources, e.g. ``model demo-1a2b
    expects hop_size 0.04 s (640 samples at 16000 Hz) (data/demo/hparams.yaml) but data/x/hparams.yaml says
    hop_size 0.02 s (320 samples at 16000 Hz)``. ``warn_unknown=False`` where unknown fields are expected
    (training hparams never name ``fmin``)."""
    differ = contract_mismatches(model, features)
    if differ:
        lines = [f"model {model_name} expects {model.describe(n)} ({model.source}) but {features.source} "
                 f"says {features.describe(n)}" for n in differ]
        raise InputContractError("the features do not fit the model: " + "; ".join(lines)
                                 + ". Use the dataset the model was trained on, or train a model on these features.")
    unknown = "; ".join(f"{', '.join(c.unknown())} unknown in {c.source}" for c in (model, features) if c.unknown())
    if unknown and warn_unknown:
        warnings.warn(f"model {model_name}: part of the input contract cannot be checked ({unknown}); make sure the "
                      "features were computed with the settings the model was trained on",
                      InputContractWarning, stacklevel=2)
