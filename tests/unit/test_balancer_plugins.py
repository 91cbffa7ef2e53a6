"""Balancers of the user's own: registration, entry-point plugins, the checks on what they return, the
test kit (on every built-in method and on broken ones) and TorchJD's aggregators as balancers."""

from __future__ import annotations

import dataclasses
import warnings
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

import mtrl.balancers.registry as registry
from mtrl.balancers import (
    BALANCERS,
    BUILTIN_BALANCERS,
    PLUGIN_FAILURES,
    Balancer,
    BalancerOptions,
    BalancerPluginError,
    balancer_class,
    balancer_takes,
    load_plugins,
    make_balancer,
    register,
)
from mtrl.balancers.options import run_options
from mtrl.balancers.testing import HostReadError, check_balancer

T = 3


@pytest.fixture(autouse=True)
def registry_as_found():
    """Every test leaves the registry as it found it."""
    saved = {name: dict(table) for name, table in (("BALANCERS", BALANCERS), ("PLUGIN_SOURCES", registry.PLUGIN_SOURCES), ("PLUGIN_FAILURES", PLUGIN_FAILURES))}
    yield
    for name, table in saved.items():
        current = getattr(registry, name)
        current.clear()
        current.update(table)


class Halves(Balancer):
    """Weights 1/T (the mean), with an option of its own."""

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Options(BalancerOptions):
        sharpness: float = 1.0
        """Unused; an option name no built-in balancer has."""

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=gram.dtype, device=gram.device)


def _gram(num_tasks: int = T, seed: int = 0) -> Tensor:
    grads = torch.randn(num_tasks, 7, generator=torch.Generator().manual_seed(seed))
    return grads @ grads.T


def test_a_registered_method_is_used_like_a_built_in_one():
    register("halves")(Halves)
    assert "halves" in BALANCERS and "halves" not in BUILTIN_BALANCERS
    balancer = make_balancer("halves", T, sharpness=2.0, seed=1, compile_solver=True)
    assert isinstance(balancer, Halves) and balancer.options.sharpness == 2.0
    assert balancer_takes("halves") == ("sharpness",) and "sharpness" in run_options(BALANCERS)
    assert torch.allclose(balancer.weights(_gram()), torch.full((T,), 1 / T))
    assert registry.PLUGIN_SOURCES["halves"] == __name__
    assert not balancer.compiles_well  # auto never compiles the whole update with a method not measured here
    check_balancer(BALANCERS["halves"])


@pytest.mark.parametrize(
    "name,cls,error,message",
    [
        ("mean", Halves, ValueError, "balancer name 'mean' is taken by mtrl.balancers.mean.Mean"),
        ("two words", Halves, ValueError, "balancer name must be letters, digits"),
        ("plain", object, TypeError, "balancer 'plain' must be a subclass of mtrl.balancers.Balancer"),
        ("unfrozen", type("Unfrozen", (Balancer,), {"Options": dict}), TypeError, "frozen dataclass"),
        ("needs", type("Needs", (Balancer,), {"run_inputs": ("device",)}), TypeError, "unknown run inputs ['device']"),
    ],
)
def test_a_class_that_cannot_be_registered_is_refused_in_one_line(name, cls, error, message):
    before = dict(BALANCERS)
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        register(name, cls)
    assert BALANCERS == before


def test_an_option_declared_with_another_default_is_refused():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class OtherC(BalancerOptions):
        c: float = 0.123
        """CAGrad's option name with another default."""

    clashing = type("Clashing", (Halves,), {"Options": OtherC})
    with pytest.raises(TypeError, match="balancer option 'c': clashing declares <class 'float'> = 0.123"):
        register("clashing", clashing)
    assert "clashing" not in BALANCERS


class _Misbehaving(Balancer):
    returns: tuple = ("raise",)  # what weights() does with the Gramian: raise, or a function of it

    def weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if self.returns[0] == "raise":
            raise ZeroDivisionError("no weights today\nsecond line")
        return self.returns[0](gram)


@pytest.mark.parametrize(
    "result,message",
    [
        ("raise", "raised ZeroDivisionError: no weights today"),
        (lambda gram: torch.ones(T + 1, dtype=gram.dtype), r"weights returned shape \(4,\), expected \(3,\)"),
        (lambda gram: gram.diagonal().numpy(), "weights returned a ndarray, not a torch tensor"),
        (lambda gram: torch.ones(T, dtype=torch.long), "weights returned dtype torch.int64"),
        (lambda gram: torch.ones(T, device="meta"), "weights returned a tensor on meta, but its inputs are on cpu"),
    ],
    ids=["raises", "shape", "host-array", "dtype", "device"],
)
def test_a_plugin_that_misbehaves_is_stopped_with_one_line_naming_it(result, message):
    register("misbehaving", type("Misbehaving", (_Misbehaving,), {"returns": (result,)}), source="plugin of example-pkg 1.0")
    balancer = make_balancer("misbehaving", T)
    with pytest.raises(BalancerPluginError, match=message) as caught:
        balancer.weights(_gram())
    assert str(caught.value).startswith("balancer 'misbehaving' (plugin of example-pkg 1.0)") and "\n" not in str(caught.value)


def test_a_plugin_that_raises_when_built_is_stopped_naming_it():
    def broken_init(self, num_tasks, options=None):
        raise RuntimeError("cannot start")

    register("unbuildable", type("Unbuildable", (Halves,), {"__init__": broken_init}))
    with pytest.raises(BalancerPluginError, match="balancer 'unbuildable' .* raised RuntimeError: cannot start"):
        make_balancer("unbuildable", T)


def test_non_finite_weights_for_finite_gradients_are_flagged_on_the_device():
    register("nan_weights", type("NanWeights", (_Misbehaving,), {"returns": (lambda gram: gram.diagonal() * float("nan"),)}))
    balancer = make_balancer("nan_weights", T)
    nan_gram = torch.full((T, T), float("nan"))
    balancer.weights(nan_gram)  # non-finite gradients are not the balancer's fault
    assert not balancer.diagnostics()["nonfinite_weights"]
    balancer.weights(_gram())
    assert balancer.diagnostics()["nonfinite_weights"] and balancer.metrics("critic")["balancer/critic/nonfinite_weights"] == 1.0
    balancer.weights(_gram())  # sticky until the trainer reads it
    assert balancer.diagnostics()["nonfinite_weights"]


def _entry_point_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plugin_in_a_test.py").write_text(
        "import torch\nfrom mtrl.balancers import Balancer\n\n"
        "class Uniform(Balancer):\n"
        "    def weights(self, gram, losses=None):\n"
        "        return torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=gram.dtype, device=gram.device)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))


def test_entry_point_plugins_are_registered_and_a_broken_one_refuses_only_its_runs(tmp_path, monkeypatch):
    _entry_point_module(tmp_path, monkeypatch)
    points = [
        EntryPoint("uniform_plugin", "plugin_in_a_test:Uniform", registry.PLUGIN_GROUP),
        EntryPoint("missing_plugin", "plugin_in_a_test:NotThere", registry.PLUGIN_GROUP),
        EntryPoint("no_module_plugin", "no_such_module_anywhere:X", registry.PLUGIN_GROUP),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [p for p in points if p.group == group])
    load_plugins()
    assert type(make_balancer("uniform_plugin", T)).__name__ == "Uniform"
    assert registry.PLUGIN_SOURCES["uniform_plugin"] == "plugin of plugin_in_a_test:Uniform"
    assert set(PLUGIN_FAILURES) == {"missing_plugin", "no_module_plugin"}
    with pytest.raises(ValueError, match=r"balancer plugin 'missing_plugin' \(plugin_in_a_test:NotThere, .*\) could not be loaded: AttributeError"):
        balancer_class("missing_plugin")
    with pytest.raises(ValueError, match="could not be loaded: ModuleNotFoundError: No module named 'no_such_module_anywhere'"):
        balancer_class("no_module_plugin")
    load_plugins()  # once only: nothing registered twice, no failure repeated
    assert list(BALANCERS).count("uniform_plugin") == 1


# ---------------------------------------------------------------------------------------------
# the test kit


@pytest.mark.parametrize("name", sorted(BUILTIN_BALANCERS))
def test_the_kit_passes_every_built_in_balancer(name):
    check_balancer(BUILTIN_BALANCERS[name])


class _SumScale(Halves):
    def weights(self, gram, losses=None):
        return torch.ones(self.num_tasks, dtype=gram.dtype, device=gram.device)


class _ReadsOnHost(Halves):
    def weights(self, gram, losses=None):
        if gram.trace() > 0:  # a Python branch on a tensor's value
            return super().weights(gram)
        return super().weights(gram)


class _UsesNumpy(Halves):
    def weights(self, gram, losses=None):
        diagonal = gram.diagonal().numpy()  # the values, on the host
        return torch.as_tensor(np.ones_like(diagonal) / diagonal.size, dtype=gram.dtype, device=gram.device)


class _StateOutsideTheStateDict(Halves):
    calls = 0

    def weights(self, gram, losses=None):
        self.calls += 1  # a Python attribute: not in the state_dict
        raw = torch.arange(1, self.num_tasks + 1, dtype=gram.dtype, device=gram.device) ** self.calls
        return raw / raw.sum()


@pytest.mark.parametrize(
    "cls,error,message",
    [
        (_SumScale, AssertionError, r"\(T=10\): equal task gradients g give 10 g"),
        (_ReadsOnHost, HostReadError, r"read a tensor's value on the host"),
        (_UsesNumpy, HostReadError, r"fails on the meta device"),
        (_StateOutsideTheStateDict, AssertionError, r"a balancer loaded from a state_dict gives another result"),
    ],
    ids=["sum-scale", "item", "numpy", "state"],
)
def test_the_kit_catches_what_a_balancer_must_not_do(cls, error, message):
    with pytest.raises(error, match=message):
        check_balancer(cls)


# ---------------------------------------------------------------------------------------------
# TorchJD


def test_torchjd_aggregators_are_balancers_with_their_own_results():
    aggregation = pytest.importorskip("torchjd.aggregation")
    grads = torch.randn(4, 30, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for name, aggregator in (("UPGrad", aggregation.UPGrad()), ("ConFIG", aggregation.ConFIG()), ("Mean", aggregation.Mean())):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            balancer = make_balancer(f"torchjd.{name}", 4)
        torch.testing.assert_close(balancer.combine(grads), aggregator(grads), rtol=1e-9, atol=1e-12)
    weights = make_balancer("torchjd.ConFIG", 4).last_weights  # before any call: the mean
    assert torch.allclose(weights, torch.full((4,), 0.25))


def test_a_torchjd_aggregator_that_reads_values_on_the_host_warns_once_when_built():
    pytest.importorskip("torchjd")
    from mtrl.balancers import HostSyncWarning

    with pytest.warns(HostSyncWarning, match="balancer torchjd.UPGrad: TorchJD's UPGrad synchronises with the host every step"):
        make_balancer("torchjd.UPGrad", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HostSyncWarning)
        make_balancer("torchjd.Mean", 3)  # tensor operations only: no warning
    check_balancer(BALANCERS["torchjd.Mean"])
    with pytest.raises(HostReadError):
        check_balancer(BALANCERS["torchjd.UPGrad"])
