"""Runs every benchmark, or those named: ``python -m benchmarks.run [bench_model ...]``.

Each benchmark is a module of this package with a ``main(argv)`` that prints its measurements;
run one alone (``python -m benchmarks.bench_model --help``) for its options.
"""

from __future__ import annotations

import argparse
import importlib
import time

# In the order they run.
BENCHMARKS = (
    "bench_model",
    "bench_preprocess",
    "bench_text",
    "bench_e2e",
    "bench_memory",
    "bench_heads",
    "bench_dedup",
    "bench_search",
)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmarks named in ``argv`` (all of them by default), each with its defaults."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(BENCHMARKS))
    names = parser.parse_args(argv).names or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in names:
        print(f"\n######## {name} ########", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"benchmarks.{name}").main([])
        print(f"######## {name}: {time.perf_counter() - start:.0f}s ########", flush=True)


if __name__ == "__main__":
    main()
