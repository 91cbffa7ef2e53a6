"""Task names of the Meta-World v3 benchmarks (Yu et al. 2019; McLean et al. 2025)."""

from __future__ import annotations

import metaworld.env_dict as mw_env_dict

BENCHMARKS: dict[str, tuple[str, ...]] = {
    "MT10": tuple(mw_env_dict.MT10_V3),
    "MT25": tuple(mw_env_dict.MT25_V3),
    "MT50": tuple(mw_env_dict.MT50_V3),
}
"""Task names of every benchmark, in Meta-World's fixed order."""

ALL_TASKS: tuple[str, ...] = tuple(mw_env_dict.ALL_V3_ENVIRONMENTS)
"""Every Meta-World v3 task name."""

RAW_OBS_DIM = 39
"""Meta-World observation size: hand (3), gripper (1), objects (14), the same 18 of the previous
step, goal position (3)."""

ACTION_DIM = 4
"""Meta-World action: hand displacement (3) and gripper effort (1), each in [-1, 1]."""


SINGLE_ENV_STEPS_PER_S: dict[str, int] = {
    "assembly-v3": 1679,
    "basketball-v3": 1955,
    "bin-picking-v3": 1780,
    "box-close-v3": 1717,
    "button-press-topdown-v3": 3867,
    "button-press-topdown-wall-v3": 4244,
    "button-press-v3": 3571,
    "button-press-wall-v3": 4034,
    "coffee-button-v3": 3406,
    "coffee-pull-v3": 860,
    "coffee-push-v3": 617,
    "dial-turn-v3": 2301,
    "disassemble-v3": 1692,
    "door-close-v3": 1516,
    "door-lock-v3": 1893,
    "door-open-v3": 1446,
    "door-unlock-v3": 2524,
    "hand-insert-v3": 1055,
    "drawer-close-v3": 2545,
    "drawer-open-v3": 2612,
    "faucet-open-v3": 4072,
    "faucet-close-v3": 3619,
    "hammer-v3": 2493,
    "handle-press-side-v3": 2411,
    "handle-press-v3": 2227,
    "handle-pull-side-v3": 1628,
    "handle-pull-v3": 2335,
    "lever-pull-v3": 1340,
    "pick-place-wall-v3": 720,
    "pick-out-of-hole-v3": 1864,
    "pick-place-v3": 558,
    "plate-slide-v3": 1577,
    "plate-slide-side-v3": 1816,
    "plate-slide-back-v3": 1649,
    "plate-slide-back-side-v3": 1641,
    "peg-insert-side-v3": 1241,
    "peg-unplug-side-v3": 1721,
    "soccer-v3": 701,
    "stick-push-v3": 626,
    "stick-pull-v3": 681,
    "push-v3": 875,
    "push-wall-v3": 1044,
    "push-back-v3": 733,
    "reach-v3": 1594,
    "reach-wall-v3": 1484,
    "shelf-place-v3": 683,
    "sweep-into-v3": 1282,
    "sweep-v3": 1300,
    "window-open-v3": 2652,
    "window-close-v3": 2540,
}
"""Steps per second of each task's environment alone with random actions (best of 3 x 300 steps,
mujoco 3.3, one core of a shared 2-core x86-64 machine). Only the ratios matter: they spread the
environments over the workers (a pick-place step costs 7 times a button-press-topdown-wall step)."""


def step_cost(task: str) -> float:
    """Relative cost of one step of `task` (seconds per step of SINGLE_ENV_STEPS_PER_S)."""
    rate = SINGLE_ENV_STEPS_PER_S.get(task)
    if rate is None:
        rates = sorted(SINGLE_ENV_STEPS_PER_S.values())
        rate = rates[len(rates) // 2]
    return 1.0 / rate


def task_names(benchmark: str) -> list[str]:
    """Task names of a benchmark ("MT10", "MT25", "MT50"), of one task ("reach-v3") or of a
    comma-separated list of tasks, in order; a clear ValueError for unknown names."""
    if not isinstance(benchmark, str):
        raise TypeError(f"benchmark must be a str, got {benchmark!r}")
    if benchmark in BENCHMARKS:
        return list(BENCHMARKS[benchmark])
    names = [name.strip() for name in benchmark.split(",")]
    if len(names) == 1 and not names[0]:
        raise ValueError(_unknown_message(benchmark))
    unknown = [name for name in names if name not in ALL_TASKS]
    if unknown:
        raise ValueError(_unknown_message(", ".join(unknown)))
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(
            f"benchmark {benchmark!r} lists {', '.join(duplicated)} more than once; "
            "use envs_per_task for several environments of one task"
        )
    return names


def _unknown_message(name: str) -> str:
    return (
        f"unknown benchmark or task {name!r}; valid benchmarks: {', '.join(BENCHMARKS)}; "
        f"valid tasks: {', '.join(ALL_TASKS)} (or a comma-separated list of tasks)"
    )
