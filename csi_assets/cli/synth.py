"""``csi synth``: write the synthetic demo covers (audio + reference-format dataset.txt)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("synth", help="generate a deterministic synthetic covers dataset")
    p.add_argument("out", type=Path, help="output folder (gets wav/ and dataset.txt)")
    p.add_argument("--works", type=int, default=20, help="number of works (default 20)")
    p.add_argument("--perfs", type=int, default=6, help="performances per work (default 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--seconds", type=float, default=30.0, help="nominal duration of a performance (default 30)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from csi_model.synth import generate_covers

    total = args.works * args.perfs
    with tqdm(total=total, unit="perf", desc="synth") as bar:
        def progress(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        catalog = generate_covers(args.out, args.works, args.perfs, seed=args.seed, seconds=args.seconds,
                                  progress=progress)
    print(f"wrote {total} performances of {args.works} works: {catalog}")
    return 0
