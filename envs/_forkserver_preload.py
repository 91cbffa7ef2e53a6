"""Imported only by the forkserver that starts the environment workers (its preload list).

It preloads envs.worker (and so metaworld and mujoco) once, so that every worker starts as a fork
of an interpreter that has already imported them, and makes the server ignore SIGTERM. Slurm
sends SIGTERM to every process of a job step, and a forkserver that dies takes its workers'
exit-status channels with it: the learner would then see every worker as dead (exit code 255)
while it finishes its step and checkpoints. The server still exits when the learner does (the
learner holds its "alive" pipe), so ignoring SIGTERM cannot orphan it. Its children, the
environment workers, inherit the ignored SIGTERM, so a signal to the whole job while a worker is
starting cannot kill it before it installs its own handlers.

Never import this module anywhere else: it changes the importing process's SIGTERM handler.
"""

import signal

import envs.worker  # noqa: F401 - the preload itself

signal.signal(signal.SIGTERM, signal.SIG_IGN)
