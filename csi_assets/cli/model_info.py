"""``csi model-info``: parameter counts of a model configuration, and whether a ``g_`` checkpoint fits it.

Before a long training (or before loading a CoverHunterMPS checkpoint) one wants to know how big the model is
and where the weights sit: the reference's defaults carry 2.2 M embedding parameters but 9.9 M in total, because
of its 30000-class classifier and centres. Without ``--hparams`` the configuration is the
reference's shipped one. With ``--checkpoint`` the model is sized like the file: from ``--hparams``, else from the
hparams stored with it (``config/hparams.yaml`` of its training folder), else from its tensor shapes, with the
reference defaults only for what none of these says; the output says which. The classifier size and the
presence of centres are read from the file unless given, and a file that does not fit is exit status 2 with
every mismatched tensor listed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csi_assets.cli import CliError

if TYPE_CHECKING:
    from csi_model.model import ModelConfig

PART_NAMES = {"embedding_network": "embedding network", "bn_neck": "BN-neck", "classifier": "classifier",
              "centres": "centres", "total": "total"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model-info", help="parameter counts of a model config; check a g_ checkpoint fits")
    p.add_argument("--hparams", type=Path, help="training hparams.yaml (default: the one stored with --checkpoint, "
                                                "else the checkpoint's shapes, else the reference's shipped model)")
    p.add_argument("--checkpoint", type=Path, help="a g_ file (ours or CoverHunterMPS's) to load into the model")
    p.add_argument("--num-classes", type=int, help="classifier outputs (default: from the checkpoint, else "
                                                   "foc.output_dims, else 30000 for the reference model)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def stored_hparams(checkpoint: Path) -> Path | None:
    """The training hparams saved with a checkpoint in the reference layout (``<run>/checkpoints/g_…`` next to
    ``<run>/config/hparams.yaml``), if that file exists."""
    path = checkpoint.resolve().parent.parent / "config" / "hparams.yaml"
    return path if path.is_file() else None


def sizing(hparams: Path | None, checkpoint: Path | None,
           file_state: dict[str, Any] | None) -> tuple[Path | None, ModelConfig | None, str]:
    """Which hparams size the model (given, else stored with the checkpoint), or the config read from the
    checkpoint's tensor shapes when there are none; plus a sentence saying which, for the output."""
    from csi_model.model import ModelConfig, config_from_state

    if hparams is not None:
        return hparams, None, f"sized from {hparams}"
    stored = stored_hparams(checkpoint) if checkpoint is not None else None
    if stored is not None:
        return stored, None, f"sized from {stored} (the hparams stored with the checkpoint)"
    if file_state is None:
        return None, ModelConfig(), "the reference's default model"
    config, inferred = config_from_state(file_state)
    defaults = [f for f in ModelConfig.__dataclass_fields__ if f not in inferred]
    return None, config, (f"no hparams: {', '.join(inferred)} read from the checkpoint's tensor shapes; "
                          f"reference defaults for {', '.join(defaults) or 'nothing'}")


def model_config(hparams: Path | None, num_classes: int | None, file_state: dict[str, Any] | None,
                 inferred: ModelConfig | None = None) -> ModelConfig:
    """The hparams' model (else ``inferred``, else the reference's), sized by --num-classes, else by the
    checkpoint's classifier."""
    from csi_model.checkpoint import CENTRES_KEY, CLASSIFIER_KEY
    from csi_model.hparams import HParamsError, load_training_hparams
    from csi_model.model import ModelConfig

    if hparams is None:
        base = inferred or ModelConfig()
    else:
        try:
            hp = load_training_hparams(hparams)
        except HParamsError as err:
            raise CliError(str(err)) from None
        base = ModelConfig.from_hparams(hp, num_classes or 0)
    if num_classes is None and file_state is not None and CLASSIFIER_KEY in file_state:
        num_classes = int(file_state[CLASSIFIER_KEY].shape[0])
    if num_classes is None and base.num_classes == 0:
        raise CliError(f"{hparams}: foc.output_dims is not set (the classifier is sized to the training data's "
                       "works); pass --num-classes N or --checkpoint")
    with_centres = base.with_centres if file_state is None else CENTRES_KEY in file_state
    return dataclasses.replace(base, num_classes=num_classes or base.num_classes, with_centres=with_centres)


def inspect(hparams: Path | None, checkpoint: Path | None, num_classes: int | None) -> dict[str, Any]:
    from csi_model.checkpoint import CheckpointError, load_generator, read_generator_state
    from csi_model.model import CoverHunter, parameter_counts

    state = None
    if checkpoint is not None:
        try:
            state = read_generator_state(checkpoint)
        except FileNotFoundError:
            raise CliError(f"{checkpoint}: no such file") from None
        except CheckpointError as err:
            raise CliError(str(err)) from None
    try:
        hparams, inferred, sized_from = sizing(hparams, checkpoint, state)
        config = model_config(hparams, num_classes, state, inferred)
    except ValueError as err:  # shapes or hparams that describe no valid model
        raise CliError(f"{checkpoint or hparams}: {err}") from None
    model = CoverHunter(config)
    info: dict[str, Any] = {"config": dataclasses.asdict(config), "sized_from": sized_from,
                            "parameters": parameter_counts(model)}
    if checkpoint is not None:
        try:
            report = load_generator(checkpoint, model)
        except CheckpointError as err:
            raise CliError(str(err)) from None
        info["checkpoint"] = {"path": str(report.path), "tensors": report.tensors,
                              "fingerprint": report.fingerprint, "ignored": list(report.ignored)}
    return info


def table(info: dict[str, Any]) -> str:
    c = info["config"]
    lines = [f"model: input_dim {c['input_dim']}, d_model {c['d_model']}, {c['num_blocks']} blocks, ff {c['ff_dim']}, "
             f"embed {c['embed_dim']}, {c['num_classes']} classes, centres {'yes' if c['with_centres'] else 'no'}",
             f"({info['sized_from']})", f"{'part':<20}{'parameters':>14}"]
    lines += [f"{PART_NAMES[k]:<20}{v:>14,}" for k, v in info["parameters"].items()]
    if "checkpoint" in info:
        ck = info["checkpoint"]
        lines.append(f"checkpoint {ck['path']}: {ck['tensors']} tensors loaded, fingerprint {ck['fingerprint']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = inspect(args.hparams, args.checkpoint, args.num_classes)
    print(json.dumps(info, indent=2) if args.json else table(info))
    return 0
