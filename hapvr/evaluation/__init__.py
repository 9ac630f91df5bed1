"""Benchmark evaluation: annotation loaders, the batched similarity engine and the evaluators."""
