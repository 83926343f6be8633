"""Contract suite every registered compression method inherits (torchao's test-base idea).

A subclass sets ``config`` (a MethodConfig), ``bad_configs`` (callables that
must raise ValueError) and ``model_names``; it gets, per model:
prepare keeps outputs bounded, convert matches prepare within ``atol``/``rtol``,
config -> YAML -> config round trip, save -> load gives identical outputs.
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
    prepare_rel_error: float = 0.5   # ||prepared(x) - float(x)|| / ||float(x)|| must stay below
    convert_atol: float = 1e-4
    convert_rtol: float = 1e-3

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
            rel = ((out - ref).norm() / ref.norm()).item()
            assert rel <= self.prepare_rel_error, f"{name}: relative output change {rel:.3f}"

    def test_convert_matches_prepare(self, x):
        for name, model in self._models():
            prepared = ts.compress_(copy.deepcopy(model), self.config, data=self._data()).eval()
            before = prepared(x)
            converted = ts.convert_(prepared).eval()
            after = converted(x)
            torch.testing.assert_close(after, before, atol=self.convert_atol, rtol=self.convert_rtol, msg=name)

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
