"""Benchmarks: run as modules (`python -m bench.bench_cases`), never collected by pytest."""
