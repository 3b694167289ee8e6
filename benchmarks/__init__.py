"""Benchmarks: each scenario runs its baseline beside it, in the same run, on the same machine."""
