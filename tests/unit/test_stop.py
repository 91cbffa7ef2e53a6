"""Stop signals: the first one is a request the loop acts on, the second leaves at once."""

from __future__ import annotations

import os
import signal

import pytest

from launch.stop import Interrupted, StopRequest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_first_signal_requests_a_stop_and_the_second_interrupts(sig, capsys):
    before = signal.getsignal(sig)
    with StopRequest("prog") as stop:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
        assert capsys.readouterr().err == ""  # the handler itself never writes
        stop.announce("checkpointing")
        stop.announce("checkpointing")
        assert capsys.readouterr().err.count(f"prog: {sig.name} received: checkpointing") == 1
        with pytest.raises(Interrupted, match="second stop signal"):
            os.kill(os.getpid(), sig)
    assert signal.getsignal(sig) is before  # handlers restored


def test_reinstall_takes_the_signals_back_and_restore_still_puts_back_what_was_there_first():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stop = StopRequest("prog").install()
    try:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a library's handler in place of the stop's (ray.init puts its own)
        stop.reinstall()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
    finally:
        stop.restore()
    assert {sig: signal.getsignal(sig) for sig in before} == before
