"""Speed, memory and accuracy measurements of hapvr, run as modules from the repository root:
``python -m benchmarks.bench_search ...``. Results are kept in ``benchmarks/results/``."""
