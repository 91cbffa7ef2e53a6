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
