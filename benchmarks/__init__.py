"""Benchmarks: kernel microbenchmarks and end-to-end throughput, with saved results."""
