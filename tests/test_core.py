"""Core: config validation and round trips, registry, selectors, surgery."""

from dataclasses import dataclass

import pytest
import torch.nn as nn

import torchslim as ts
from torchslim.core import FoldBN, MethodConfig, get_method, select, set_module
from torchslim.core.config import check_choice, check_range
from torchslim.core.registry import _BY_CONFIG, _METHODS, Method, register_method


@dataclass(frozen=True)
class _Toy(MethodConfig):
    amount: float = 0.5
    mode: str = "l1"

    def validate(self):
        check_range(self, "amount", 0.0, 1.0, hi_open=True)
        check_choice(self, "mode", ("l1", "l2"))


@pytest.fixture
def toy():
    @register_method("test.toy")
    class _ToyMethod(Method):
        config_cls = _Toy

    yield _Toy
    _METHODS.pop("test.toy")
    _BY_CONFIG.pop(_Toy)


def test_validation_messages(toy):
    with pytest.raises(ValueError, match=r"_Toy.amount=1.5 is out of range; use a number in \[0.0, 1.0\)"):
        toy(amount=1.5)
    with pytest.raises(ValueError, match=r"use one of \['l1', 'l2'\]"):
        toy(mode="l3")
    with pytest.raises(ValueError, match="amount"):  # an override is validated like the config
        toy(overrides={"re:conv.*": {"amount": 2.0}})


def test_round_trip_and_unknown_names(toy):
    cfg = toy(amount=0.25, layers=["re:conv.*"], exclude=("fc",), overrides={"conv1": {"mode": "l2"}})
    assert cfg.layers == ("re:conv.*",)  # lists become tuples: immutable
    assert MethodConfig.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ValueError, match="unknown field"):
        MethodConfig.from_dict({"method": "test.toy", "amont": 0.1})
    with pytest.raises(ValueError, match="known methods"):
        MethodConfig.from_dict({"method": "os.system"})
    with pytest.raises(ValueError, match="'method' key"):
        MethodConfig.from_dict({"amount": 0.1})


def test_for_layer_precedence(toy):
    cfg = toy(overrides={"re:conv.*": {"amount": 0.1}, "conv2": {"amount": 0.2}})
    assert cfg.for_layer("conv2").amount == 0.2  # exact name wins
    assert cfg.for_layer("conv1").amount == 0.1  # then regex
    assert cfg.for_layer("fc").amount == 0.5  # then default


def test_select_by_type_layers_exclude():
    model = ts.create_model("resnet20")
    names = [n for n, _, _ in select(model, FoldBN(), (nn.BatchNorm2d,))]
    assert len(names) == 21
    names = [
        n for n, _, _ in select(model, FoldBN(layers=("re:layer1\\..*",), exclude=("layer1.0.bn1",)), (nn.BatchNorm2d,))
    ]
    assert len(names) == 5 and "layer1.0.bn1" not in names
    with pytest.raises(ValueError, match="is a Conv2d"):
        list(select(model, FoldBN(layers=("conv1",)), (nn.BatchNorm2d,)))


def test_surgery_replaces_nested_module():
    model = ts.create_model("resnet20")
    old = set_module(model, "layer2.0.shortcut.0", nn.Identity())
    assert isinstance(old, nn.Conv2d) and isinstance(model.layer2[0].shortcut[0], nn.Identity)
    with pytest.raises(ValueError):
        set_module(model, "", nn.Identity())


def test_registry_lookup():
    assert get_method("core.fold_bn").config_cls is FoldBN
    with pytest.raises(TypeError):
        ts.compress_(ts.create_model("lenet5"), {"method": "core.fold_bn"})
