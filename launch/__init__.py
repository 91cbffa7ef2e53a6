"""Composition root: configs and presets, the assembly of a run, the SAC and PPO training loops,
and the mtrl-train, mtrl-eval and mtrl-plot entry points. The benchmark commands live in
``benchmarks/``, mtrl-sweep and mtrl-report in ``experiments/``."""
