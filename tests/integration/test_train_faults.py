"""Faults a long run meets, and bad input: every one ends in one line, with nothing lost or half-made.

Tiny two-task runs (the settings of test_train_cli; the finished runs that several tests start from are
trained once, in ``conftest.py``); where a real fault is impractical (a full disk, a diverging network,
a dead simulator at a given step) it is injected.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from launch.evaluate import main as eval_main
from launch.run_dir import RunLock
from launch.train import main as train_main
from launch.sac_trainer import SACTrainer
from mtrl.checkpoint import list_checkpoints, load_latest
from mtrl.logging import read_metrics
from tiny_runs import EPISODE, NO_COMPILE, TINY, training_records  # tests/integration/tiny_runs.py

pytestmark = pytest.mark.xdist_group("tiny_runs")  # one worker trains the shared runs once (conftest.py)


def _train(*args: str) -> int:
    return train_main([*TINY, *args])


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "the first updates compile" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args", [["--replay.updates-per-step", "nan"], ["--replay.updates-per-step", "inf"], ["--seed", "-1"], ["--balancer.c", "nan"]])
def test_bad_numbers_are_refused_before_the_run_directory_exists(tmp_path, capsys, args):
    # in-process; test_train_cli runs the command itself once for the exit status of a refused value
    with pytest.raises(SystemExit) as exit_info:
        train_main([*TINY, "--run-dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert args[0].lstrip("-").replace("-", "_").split(".")[-1] in err.replace("-", "_")
    assert not (tmp_path / "run").exists()


def test_a_run_directory_under_a_file_or_unwritable_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("")
    assert _train("--run-dir", str(tmp_path / "afile" / "run")) == 2
    assert "is a file, not a directory" in _one_line(capsys.readouterr().err)

    def read_only(self, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert _train("--run-dir", str(tmp_path / "ro" / "run")) == 2
    assert "cannot create or write it (Read-only file system)" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "ro").exists()


def test_a_failure_while_building_leaves_no_half_made_run_directory(tmp_path, capsys, monkeypatch):
    def no_simulator(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr("launch.factory.make_envs", no_simulator)
    assert _train("--run-dir", str(tmp_path / "run")) == 1
    assert "Cannot allocate memory" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_resume_checks_its_arguments_before_touching_the_run(tmp_path, capsys, sac_run_400):
    run = sac_run_400.copy_to(tmp_path / "run")
    newest = list_checkpoints(run / "checkpoints")[-1]
    (newest / "state.pt").write_bytes(b"broken")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # tyro's own box for a value __post_init__ refuses
        train_main(["--resume", str(run), "--total-steps", "-5"])
    assert exit_info.value.code == 2 and "total_steps must be > 0" in capsys.readouterr().err
    assert train_main(["--resume", str(run), "--sac.hidden-dims", "16", "16"]) == 2
    assert "sac.hidden_dims cannot change when a run resumes" in _one_line(capsys.readouterr().err)
    assert newest.is_dir() and not list((run / "checkpoints").glob("broken_*"))  # nothing renamed


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_can_restart_in_place(tmp_path, capsys):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "launch.train", *TINY, *NO_COMPILE, "--total-steps", "400", "--run-dir", str(run)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()  # long before the first checkpoint (step 200): the environments are still being built
    process.wait(timeout=30)
    assert (run / "config.json").exists() and not list_checkpoints(run / "checkpoints")
    assert train_main(["--resume", str(run)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "has no checkpoint yet" in line and f"mtrl-train --resume {run} --restart" in line
    assert train_main(["--resume", str(run), "--restart", "--checkpoint-every", "200"]) == 0
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000000000200", "step_000000000400"]
    assert json.loads((run / "config.json").read_text())["checkpoint_every"] == 200
    events = [json.loads(line)["event"] for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert events == ["start", "restart"]


# ----------------------------------------------------------------------------- signals


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_exits_0_and_the_run_resumes_exactly(tmp_path, sig):
    """Sent to the whole process group (as Slurm and Ctrl-C do): workers ignore it, the learner checkpoints.

    Both signals reach the same handler (launch.stop.StopRequest), so the exact comparison with an
    uninterrupted run is made once, for SIGTERM; after SIGINT the run resumes and ends where it should.
    """
    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    common = [*TINY, *NO_COMPILE, "--checkpoint-every", "100000", "--env.num-workers", "1"]
    command = [sys.executable, "-m", "launch.train", *common, "--total-steps", "100000", "--run-dir", str(stopped)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if (stopped / "metrics.jsonl").exists() and any(r["step"] >= 300 for r in read_metrics(stopped / "metrics.jsonl")):
                break
            time.sleep(0.1)
        os.killpg(process.pid, sig)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err and f"--resume {stopped}" in err
    (checkpoint,) = list_checkpoints(stopped / "checkpoints")
    step = load_latest(stopped / "checkpoints")[1]["global_step"]
    assert step >= 300 and step % (2 * EPISODE) == 0  # an episode boundary
    assert train_main(["--resume", str(stopped), "--total-steps", str(step + 200)]) == 0
    assert load_latest(stopped / "checkpoints")[1]["global_step"] == step + 200
    if sig != signal.SIGTERM:
        return
    assert train_main([*common, "--total-steps", str(step + 200), "--run-dir", str(straight)]) == 0
    params_a = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    params_b = load_latest(stopped / "checkpoints")[1]["agent"]["modules"]
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)  # same code, same machine: exact
    assert training_records(straight) == training_records(stopped)


# ----------------------------------------------------------------------------- faults during a run


@pytest.mark.slow
def test_a_killed_worker_ends_with_one_line_and_the_checkpoints_intact(tmp_path, capsys, monkeypatch):
    learn = SACTrainer.learn

    def kill_worker_at_step_300(self):
        if self.global_step == 300:
            os.kill(self.envs.worker_pids[0], signal.SIGKILL)
        return learn(self)

    monkeypatch.setattr(SACTrainer, "learn", kill_worker_at_step_300)
    run = tmp_path / "run"
    assert _train("--total-steps", "800", "--run-dir", str(run), "--env.num-workers", "1") == 1
    line = _one_line(capsys.readouterr().err)
    assert "died" in line and "SIGKILL" in line and "reach-v3" in line and f"--resume {run}" in line
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000000000200"]


@pytest.mark.slow
def test_a_hung_simulator_ends_the_run_within_its_deadline_naming_the_task(tmp_path, capsys, monkeypatch):
    learn, stopped = SACTrainer.learn, []

    def stop_worker_at_step_300(self):
        if self.global_step == 300:
            stopped.append(self.envs.worker_pids[0])
            os.kill(stopped[0], signal.SIGSTOP)  # a simulator that hangs: alive, never answering
        return learn(self)

    monkeypatch.setattr(SACTrainer, "learn", stop_worker_at_step_300)
    run = tmp_path / "run"
    started = time.monotonic()
    assert _train("--total-steps", "800", "--run-dir", str(run), "--env.num-workers", "1", "--env.worker-timeout-s", "2") == 1
    assert time.monotonic() - started < 120
    line = _one_line(capsys.readouterr().err)
    assert "made no progress for 2 s" in line and "reach-v3" in line and f"--resume {run}" in line
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000000000200"]
    assert not Path(f"/proc/{stopped[0]}").exists() or "Z" in Path(f"/proc/{stopped[0]}/stat").read_text().split(")")[-1][:3]


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_cleans_up(tmp_path, capsys, monkeypatch):
    import mtrl.checkpoint

    save, calls = torch.save, []

    def fill_the_disk(obj, file, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            file.write(b"partial")
            raise OSError(28, "No space left on device")
        return save(obj, file, *args, **kwargs)

    monkeypatch.setattr(mtrl.checkpoint.torch, "save", fill_the_disk)
    run = tmp_path / "run"
    assert _train("--total-steps", "800", "--run-dir", str(run)) == 1
    line = _one_line(capsys.readouterr().err)
    assert "cannot write checkpoint step_000000000400" in line and "No space left on device" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000000000200"]  # no .tmp_ left
    monkeypatch.undo()
    assert train_main(["--resume", str(run), "--total-steps", "400"]) == 0


@pytest.mark.slow
def test_non_finite_parameters_are_never_checkpointed(tmp_path, capsys, monkeypatch):
    learn = SACTrainer.learn

    def diverge_just_before_the_checkpoint_at_400(self):
        metrics = learn(self)
        if self.global_step == 400 - 2:  # after this step's updates: the actor (and so the actions) stay finite
            with torch.no_grad():
                next(self.agent.critic.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr(SACTrainer, "learn", diverge_just_before_the_checkpoint_at_400)
    run = tmp_path / "run"
    assert _train("--total-steps", "800", "--run-dir", str(run), "--log-every", "1000") == 1
    line = _one_line(capsys.readouterr().err)
    assert "non-finite values in agent.modules.critic" in line and "no checkpoint written" in line
    assert "last good checkpoint: step_000000000200" in line
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step_000000000200"]


@pytest.mark.slow
def test_non_finite_actions_never_reach_the_simulators(tmp_path, capsys, monkeypatch):
    learn, sent = SACTrainer.learn, []

    def diverge_at_step_300(self):
        metrics = learn(self)
        if self.global_step == 300:
            with torch.no_grad():
                for p in self.agent.actor.parameters():
                    p.fill_(float("nan"))
        return metrics

    monkeypatch.setattr(SACTrainer, "learn", diverge_at_step_300)
    step_async = None

    def record(self, actions):
        sent.append(actions.copy())
        return step_async(self, actions)

    from envs import MultiTaskVectorEnv

    step_async = MultiTaskVectorEnv.step_async
    monkeypatch.setattr(MultiTaskVectorEnv, "step_async", record)
    run = tmp_path / "run"
    assert _train("--total-steps", "800", "--run-dir", str(run)) == 1
    line = _one_line(capsys.readouterr().err)
    assert "non-finite actions from the policy at step" in line and "reach-v3" in line
    assert all(a.size and (a == a).all() for a in sent)  # no NaN was ever sent


@pytest.mark.slow
def test_resume_takes_new_learning_rates_and_records_them(tmp_path, capsys, sac_run_200):
    first = sac_run_200.copy_to(tmp_path / "first")
    run = first.rename(tmp_path / "moved")  # a run directory may move between its start and a resume
    assert train_main(["--resume", str(run), "--run-dir", str(tmp_path / "other")]) == 2
    assert "run_dir cannot change when a run resumes" in _one_line(capsys.readouterr().err)
    assert train_main(["--resume", str(run), "--total-steps", "400", "--sac.critic-optimizer.lr", "1e-4",
                       "--sac.critic-optimizer.max-grad-norm", "1.0", "--balancer.c", "0.2"]) == 0
    err = capsys.readouterr().err
    assert "sac.critic_optimizer.lr: 0.0003 -> 0.0001" in err
    payload = load_latest(run / "checkpoints")[1]
    rates = {name: [float(g["lr"]) for g in payload["agent"][f"{name}_optimizer"]["param_groups"]] for name in ("critic", "actor")}
    assert rates["critic"] == pytest.approx([1e-4] * len(rates["critic"]), rel=1e-6)  # a float32 tensor on the device
    assert rates["actor"] == pytest.approx([3e-4] * len(rates["actor"]), rel=1e-6)
    assert payload["config"]["balancer"]["c"] == 0.2
    history = [json.loads(line) for line in (run / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["changes"]["sac.critic_optimizer.lr"] == [3e-4, 1e-4] and history[-1]["step"] == 200
    assert json.loads((run / "config.json").read_text())["sac"]["critic_optimizer"]["lr"] == 1e-4


# ----------------------------------------------------------------------------- one run, one process


@pytest.mark.slow
def test_a_run_in_use_is_refused_and_the_lock_dies_with_its_holder(tmp_path, capsys, sac_run_200):
    run = sac_run_200.copy_to(tmp_path / "run")
    lock = RunLock(run)
    try:
        assert train_main(["--resume", str(run), "--total-steps", "400"]) == 2
        assert "is in use" in _one_line(capsys.readouterr().err)
        assert eval_main([str(run), "--episodes", "1"]) == 2
        assert "is in use" in capsys.readouterr().err
    finally:
        lock.release()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from launch.run_dir import RunLock; from pathlib import Path; RunLock(Path({str(run)!r})); print('held', flush=True); import time; time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match="in use"):
        RunLock(run)
    holder.kill()
    holder.wait(timeout=10)
    RunLock(run).release()  # the kernel released the dead holder's lock


# ----------------------------------------------------------------------------- untrusted checkpoints


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.slow
def test_a_checkpoint_that_carries_code_is_refused_without_running_it(tmp_path, capsys, sac_run_200):
    import hashlib

    run = sac_run_200.copy_to(tmp_path / "run")
    checkpoint = list_checkpoints(run / "checkpoints")[-1]
    payload = torch.load(checkpoint / "state.pt", weights_only=True)
    marker = tmp_path / "code_ran"
    payload["config"]["extra"] = _RunsCode(marker)
    torch.save(payload, checkpoint / "state.pt", pickle_protocol=pickle.DEFAULT_PROTOCOL)
    meta = json.loads((checkpoint / "meta.json").read_text())
    data = (checkpoint / "state.pt").read_bytes()
    meta.update(state_bytes=len(data), state_sha256=hashlib.sha256(data).hexdigest())  # a forged, consistent checksum
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert eval_main([str(run), "--episodes", "1"]) == 2
    assert train_main(["--resume", str(run), "--total-steps", "400"]) == 2
    assert not marker.exists()
    assert "refused without loading them" in capsys.readouterr().err


@pytest.mark.slow
def test_mtrl_eval_checks_every_argument_before_it_builds_or_writes(tmp_path, capsys, sac_run_200):
    run = sac_run_200.copy_to(tmp_path / "run")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    cases = [
        (["--num-workers", "-1"], "--num-workers must be >= 0"),
        (["--video", "no-such-task"], "no task 'no-such-task' in this run"),
        (["--checkpoint", "../../elsewhere/step_000000000200"], "--checkpoint must be the name of a checkpoint"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    for args, message in cases:
        assert eval_main([str(run), "--episodes", "1", *args]) == 2, args
        assert message in _one_line(capsys.readouterr().err), args
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MB file system, full after three checkpoints of a tiny run (root only: skipped where mount is not permitted)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)], capture_output=True)
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_a_really_full_disk_keeps_the_last_checkpoints_and_resume_says_so(small_tmpfs, capsys):
    run = small_tmpfs / "run"
    assert _train("--total-steps", "4000", "--run-dir", str(run), "--replay.buffer-capacity-per-task", "1000") == 1
    line = _one_line(capsys.readouterr().err)
    assert "cannot write checkpoint" in line and "the earlier checkpoints are intact" in line
    kept = list_checkpoints(run / "checkpoints")
    assert kept and not list((run / "checkpoints").glob(".tmp_*"))
    assert load_latest(run / "checkpoints")[0] == kept[-1]  # the newest one left is intact
    assert train_main(["--resume", str(run), "--total-steps", "4000"]) == 1  # still full: one line again
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mtrl-train: error:")]
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0]
    assert list_checkpoints(run / "checkpoints")[-1] == kept[-1]


def test_a_read_only_file_system_is_refused_before_anything(small_tmpfs, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    assert _train("--run-dir", str(small_tmpfs / "run")) == 2
    assert "is not writable" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
def test_ppo_stops_inside_a_rollout_at_an_episode_boundary_and_resumes_exactly(tmp_path, monkeypatch):
    """Rollouts of two episodes; the stop comes after the first (step 100 of a 200-step rollout)."""
    from launch.ppo_trainer import PPOTrainer
    from launch.trainer import Trainer

    ppo = [
        "ppo-smoke", "--env.benchmark", "reach-v3,drawer-close-v3", "--env.max-episode-steps", str(EPISODE),
        "--ppo.hidden-dims", "32", "32", "--ppo.rollout-steps", str(2 * EPISODE), "--ppo.epochs", "2",
        "--ppo.minibatches", "2", "--log-every", "100", "--checkpoint-every", "400", "--final-eval-episodes", "1",
        "--torch-threads", "1", "--no-progress",
    ]
    record = Trainer._record_step

    def signal_at_step_290(self, step, progress):
        record(self, step, progress)
        if self.global_step == 290:  # mid-episode: the stop waits for the boundary at 300
            self.stop.signal_name = "SIGTERM"

    stopped, straight = tmp_path / "stopped", tmp_path / "straight"
    monkeypatch.setattr(PPOTrainer, "_record_step", signal_at_step_290)
    assert train_main([*ppo, "--total-steps", "400", "--run-dir", str(stopped)]) == 0
    monkeypatch.undo()
    payload = load_latest(stopped / "checkpoints")[1]
    assert payload["global_step"] == 300 and payload["rollout"]["position"] == EPISODE  # half a rollout
    assert train_main(["--resume", str(stopped)]) == 0
    assert train_main([*ppo, "--total-steps", "400", "--run-dir", str(straight)]) == 0
    params_a = load_latest(straight / "checkpoints")[1]["agent"]["modules"]
    params_b = load_latest(stopped / "checkpoints")[1]["agent"]["modules"]
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a)
    assert training_records(straight) == training_records(stopped)
