"""Run the benchmark suite: `python -m benchmarks [NAME ...] [--quick] [--out DIR]`.

Each benchmark is a module with `run(quick: bool, out_dir: Path) -> dict`, registered below
by name; it writes its JSON and markdown results under the results folder and returns a
summary that is printed here.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

BENCHMARKS = {
    "probes": "benchmarks.probes",
    "extraction": "benchmarks.extraction",
    "scale_out": "benchmarks.scale_out",
    "interpretability": "benchmarks.interpretability",
    "readback": "benchmarks.readback",
    "demo": "benchmarks.demo",
}
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"default: all of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="a small smoke-check version")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or list(BENCHMARKS):
        print(f"== {name}{' (quick)' if args.quick else ''}", flush=True)
        summary = importlib.import_module(BENCHMARKS[name]).run(quick=args.quick, out_dir=args.out)
        print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
