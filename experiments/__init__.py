"""Experiments over many runs: ``mtrl-sweep`` (a grid of mtrl-train trials on Ray) and ``mtrl-report``
(their comparison with confidence intervals, Agarwal et al. 2021's rliable)."""
