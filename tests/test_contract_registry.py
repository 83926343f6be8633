"""The contract suite is driven by the registry: every registered method has a contract class
that runs on at least two models, so a new method without one fails here."""

import importlib
from pathlib import Path

import torchslim as ts

from contract import MethodContract


def _contracts() -> list[type]:
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        importlib.import_module(path.stem)
    todo, out = list(MethodContract.__subclasses__()), []
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "config" in vars(cls) or any("config" in vars(b) for b in cls.__mro__[1:-1] if b is not MethodContract):
            out.append(cls)
    return out


def test_every_registered_method_has_a_contract_on_two_models():
    models: dict[str, set[str]] = {}
    for cls in _contracts():
        models.setdefault(cls.config.method, set()).update(cls.model_names)
    missing = sorted(set(ts.list_methods()) - set(models))
    assert not missing, f"methods without a contract class (subclass tests/contract.py:MethodContract): {missing}"
    thin = sorted(m for m, names in models.items() if len(names) < 2)
    assert not thin, f"contracts that run on fewer than two models: {thin}"
