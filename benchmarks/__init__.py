"""Benchmarks and the CAGrad toy, kept out of the training package: ``mtrl-bench-update`` (the cost
of one balanced update), ``mtrl-bench-envs`` (Meta-World environment throughput),
``mtrl-bench-learning`` (multi-task SAC and PPO learn, and compare with stable-baselines3) and
``mtrl-toy`` (the two-objective toy of the CAGrad paper). They import :mod:`launch` (configs, the
trainer factory) and below, never the reverse, and what only they need (stable-baselines3) is
the ``bench`` extra: ``pip install -e '.[bench]'``.
"""
