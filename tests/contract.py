"""Contract suite every registered compression method inherits (torchao's test-base idea).

A subclass sets ``config`` (a MethodConfig), ``bad_configs`` (callables that
must raise ValueError) and ``model_names`` (at least two); it gets, per model:

* prepare against the method's own maths: ``prepare_reference(original, prepared)`` builds,
  with plain torch ops and independently of the method's code, the model prepare must
  compute (masked weights, +/-1 weights, the dense weight a factor chain equals); the
  outputs must agree to float rounding (``reference_rtol`` of the output norm). The
  reference may assert its own bounds (e.g. Eckart-Young for a truncated SVD).
  Without a reference, only the loose ``prepare_rel_error`` bound applies;
* convert matches prepare within ``convert_atol + convert_scale_rtol * max|output|``
  (+ ``convert_rtol``), or ``convert_reference`` for methods whose convert changes the
  function by design (channel removal equals masking the removed channels);
* config -> YAML -> config round trip, save -> load gives identical outputs, bad configs raise.

``tests/test_contract_registry.py`` checks that every registered method has a contract.
"""

from __future__ import annotations

import copy

import pytest
import torch

import torchslim as ts
from torchslim.core.config import MethodConfig


def _calibrated(name: str) -> torch.nn.Module:
    """A registry model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = ts.create_model(name)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    return model.eval()


class MethodContract:
    config: MethodConfig
    bad_configs: tuple = ()
    model_names: tuple[str, ...] = ("lenet5",)
    prepare_rel_error: float = 0.5  # ||prepared(x) - float(x)|| / ||float(x)|| must stay below
    reference_rtol: float = 1e-5  # ||prepared(x) - reference(x)|| / ||reference(x)||
    convert_atol: float = 1e-4
    convert_rtol: float = 1e-3
    convert_scale_rtol: float = 0.0  # extra absolute tolerance, relative to the largest output

    def prepare_reference(self, original: torch.nn.Module, prepared: torch.nn.Module) -> torch.nn.Module | None:
        """The model prepare must equal, built independently of the method's code (None: no reference)."""
        return None

    def convert_reference(self, prepared: torch.nn.Module, converted: torch.nn.Module) -> torch.nn.Module | None:
        """The model convert must equal when it is not the prepared model (None: the prepared model)."""
        return None

    @pytest.fixture
    def x(self):
        return torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def _data(self):
        """Calibration batches for methods that need data (random inputs are enough for the contract)."""
        g = torch.Generator().manual_seed(2)
        return [(torch.randn(16, 1, 28, 28, generator=g), torch.zeros(16, dtype=torch.long)) for _ in range(2)]

    def _models(self):
        return [(n, _calibrated(n)) for n in self.model_names]

    def test_prepare_keeps_outputs_bounded(self, x):
        for name, model in self._models():
            ref = model(x)
            prepared = ts.compress_(copy.deepcopy(model), self.config, data=self._data()).eval()
            out = prepared(x)
            assert out.shape == ref.shape, name
            assert torch.isfinite(out).all(), name
            if self.prepare_reference(model, prepared) is None:  # else the reference test is the bound
                rel = ((out - ref).norm() / ref.norm()).item()
                assert rel <= self.prepare_rel_error, f"{name}: relative output change {rel:.3f}"

    def test_prepare_matches_reference(self, x):
        checked = 0
        for name, model in self._models():
            prepared = ts.compress_(copy.deepcopy(model), self.config, data=self._data()).eval()
            with torch.no_grad():
                reference = self.prepare_reference(model, prepared)
                if reference is None:  # no reference for this model (e.g. only plain chains)
                    continue
                out, ref = prepared(x), reference.eval()(x)
            rel = ((out - ref).norm() / ref.norm()).item()
            assert rel <= self.reference_rtol, f"{name}: prepare differs from the reference by {rel:.2e}"
            checked += 1
        if not checked:
            pytest.skip("no independent reference for this method's prepare")

    def test_convert_matches_prepare(self, x):
        for name, model in self._models():
            prepared = ts.compress_(copy.deepcopy(model), self.config, data=self._data()).eval()
            with torch.no_grad():
                before = prepared(x)
            snapshot = copy.deepcopy(prepared)
            converted = ts.convert_(prepared).eval()  # not under no_grad: graph tracers need autograd
            with torch.no_grad():
                after = converted(x)
                reference = self.convert_reference(snapshot, converted)
                if reference is not None:
                    before = reference.eval()(x)
            atol = self.convert_atol + self.convert_scale_rtol * float(before.abs().max())
            torch.testing.assert_close(after, before, atol=atol, rtol=self.convert_rtol, msg=name)

    def test_yaml_round_trip(self):
        again = MethodConfig.from_yaml(self.config.to_yaml())
        assert again == self.config
        assert type(again) is type(self.config)

    def test_save_load_identical(self, x, tmp_path):
        for name, model in self._models():
            ts.compress_(model, self.config, data=self._data())
            ts.convert_(model)
            model.eval()
            ts.save(model, tmp_path / f"{name}.slim")
            loaded = ts.load(tmp_path / f"{name}.slim")
            assert torch.equal(loaded(x), model(x)), name

    def test_bad_configs_raise(self):
        for make in self.bad_configs:
            with pytest.raises(ValueError):
                make()

    def test_registered(self):
        assert self.config.method in ts.list_methods()
