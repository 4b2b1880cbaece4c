"""Benchmark modules, one per subject: `python -m nanocodec.bench NAME [args]`.

Each `nanocodec/bench/NAME.py` has a `main(argv) -> None` that times our code and a named baseline
in the same run and prints the ratio. Benchmarks are never tests: they only print figures.
"""
