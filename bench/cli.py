"""Start-up benchmark: wall time of ``csi --help`` against a bare interpreter start, in the same process.

Each sample starts a fresh interpreter (what a user pays on every ``csi`` call): ``python -c pass`` is the baseline,
``csi --help`` the product. Samples alternate so a load change on the machine hits both; the median of each is
printed with their ratio, and which heavy libraries building the parser imported (it should be none).

    .venv/bin/python bench/cli.py [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "dagster", "duckdb", "scipy", "sklearn", "matplotlib", "faiss", "nnAudio")

CSI_HELP = "import sys; from csi_assets.cli import main; sys.argv[0] = 'csi'; sys.exit(main(['--help']))"

HEAVY_PROBE = (
    "import json, sys; from csi_assets.cli import build_parser; build_parser(); "
    f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
)


def wall_time(code: str) -> float:
    """Seconds for a fresh interpreter to run ``code`` and exit (output discarded)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="samples of each command (default 7)")
    args = parser.parse_args()
    wall_time(CSI_HELP)  # warm the file cache: the first start reads every .pyc from disk
    baseline, product = [], []
    for _ in range(args.runs):
        baseline.append(wall_time("pass"))
        product.append(wall_time(CSI_HELP))
    base_s, help_s = statistics.median(baseline), statistics.median(product)
    heavy = json.loads(subprocess.run([sys.executable, "-c", HEAVY_PROBE], check=True, capture_output=True,
                                      text=True).stdout)
    print(f"python -c pass : median {base_s * 1e3:7.1f} ms over {args.runs} runs")
    print(f"csi --help     : median {help_s * 1e3:7.1f} ms over {args.runs} runs "
          f"(min {min(product) * 1e3:.1f}, max {max(product) * 1e3:.1f})")
    print(f"ratio csi --help / python -c pass: {help_s / base_s:.1f}x")
    print(f"heavy modules imported by building the parser: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
