"""Meta-World benchmarks on CPU worker processes and the evaluation protocol."""
