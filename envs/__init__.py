"""Meta-World benchmarks on CPU worker processes and the evaluation protocol.

Meta-World: Yu et al. 2019 ("Meta-World: A Benchmark and Evaluation for Multi-Task and Meta
Reinforcement Learning"); v3 / Meta-World+: McLean et al. 2025. Policies come in as plain callables
from numpy observations [N, obs_dim] to numpy actions [N, 4].
"""

from envs.config import EnvConfig
from envs.evaluation import EvalResult, evaluate
from envs.tasks import BENCHMARKS, task_names
from envs.vector import MultiTaskVectorEnv, StepResult, make_envs
from envs.video import RendererUnavailableError, record_video
from envs.worker import EnvWorkerError

__all__ = [
    "BENCHMARKS",
    "EnvConfig",
    "EnvWorkerError",
    "EvalResult",
    "MultiTaskVectorEnv",
    "RendererUnavailableError",
    "StepResult",
    "evaluate",
    "make_envs",
    "record_video",
    "task_names",
]
