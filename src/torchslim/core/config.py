"""MethodConfig: the frozen, validated dataclass every method is configured by.

Per-layer choice follows torchao's order: exact module name, then ``re:``
regex, then the config's defaults. ``layers`` restricts a method to some
modules, ``exclude`` removes modules, ``overrides`` changes fields per layer::

    Magnitude(sparsity=0.9, exclude=("fc2",), overrides={"re:conv.*": {"sparsity": 0.5}})
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torchslim.core.registry import get_method


@dataclass(frozen=True)
class MethodConfig:
    """Base class of method configs.

    Attributes:
        layers: selectors of modules the method applies to (``None``: every
            module of a supported type). Exact dotted names or ``re:REGEX``.
        exclude: selectors of modules to leave untouched.
        overrides: selector -> {field: value} per-layer changes.
    """

    method: ClassVar[str] = ""

    layers: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so the config stays immutable.
        if self.layers is not None:
            object.__setattr__(self, "layers", _as_selectors("layers", self.layers))
        object.__setattr__(self, "exclude", _as_selectors("exclude", self.exclude))
        if not isinstance(self.overrides, dict):
            raise ValueError(
                f"{type(self).__name__}.overrides must be a mapping selector -> "
                f"{{field: value}}, got {self.overrides!r}"
            )
        names = {f.name for f in dataclasses.fields(self)} - {"layers", "exclude", "overrides"}
        for sel, changes in self.overrides.items():
            _check_selector("overrides", sel)
            if not isinstance(changes, dict):
                raise ValueError(f"overrides[{sel!r}] must be a mapping, got {changes!r}")
            bad = set(changes) - names
            if bad:
                raise ValueError(
                    f"overrides[{sel!r}] sets unknown field(s) {sorted(bad)}; "
                    f"{type(self).__name__} fields are {sorted(names)}"
                )
            # Validate each override by building the per-layer config.
            dataclasses.replace(self, overrides={}, **changes)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the value and the allowed range."""

    # -- per layer -------------------------------------------------------
    def for_layer(self, name: str) -> MethodConfig:
        """Config for module ``name``: exact-name override, else regex, else self."""
        if name in self.overrides:
            return dataclasses.replace(self, overrides={}, **self.overrides[name])
        for sel, changes in self.overrides.items():
            if sel.startswith("re:") and re.fullmatch(sel[3:], name):
                return dataclasses.replace(self, overrides={}, **changes)
        return self

    # -- dict / YAML round trip -----------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_yaml(self) -> str:
        import yaml  # deploy-time imports of core stay free of yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> MethodConfig:
        """Build a config from ``{"method": NAME, field: value, ...}``.

        Only registered method names resolve; unknown fields are an error.
        """
        if not isinstance(d, dict) or "method" not in d:
            raise ValueError(f"a method config needs a 'method' key, got {d!r}")
        d = dict(d)
        cls = get_method(d.pop("method")).config_cls
        allowed = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - allowed
        if bad:
            raise ValueError(f"{cls.method}: unknown field(s) {sorted(bad)}; allowed: {sorted(allowed)}")
        try:
            return cls(**d)
        except TypeError as e:  # wrong types that dataclass itself rejects
            raise ValueError(f"{cls.method}: {e}") from None

    @staticmethod
    def from_yaml(text: str) -> MethodConfig:
        import yaml

        return MethodConfig.from_dict(yaml.safe_load(text))


def _check_selector(field_name: str, sel: Any) -> None:
    if not isinstance(sel, str) or not sel:
        raise ValueError(f"{field_name}: a selector must be a non-empty string, got {sel!r}")
    if sel.startswith("re:"):
        try:
            re.compile(sel[3:])
        except re.error as e:
            raise ValueError(f"{field_name}: bad regex {sel!r}: {e}") from None


def _as_selectors(field_name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{field_name} must be a list of selectors, got {value!r}")
    for sel in value:
        _check_selector(field_name, sel)
    return tuple(value)


def check_range(
    cfg: MethodConfig, name: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> None:
    """Validate that ``cfg.<name>`` lies in [lo, hi] (or open ends)."""
    v = getattr(cfg, name)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{type(cfg).__name__}.{name}={v!r} is out of range; use a number in {lb}{lo}, {hi}{rb}")


def check_int(cfg: MethodConfig, name: str, lo: int, hi: int | None = None) -> None:
    """Validate that ``cfg.<name>`` is an integer (not a bool) in [lo, hi] (no upper bound if ``hi`` is None)."""
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        allowed = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise ValueError(f"{type(cfg).__name__}.{name}={v!r} is out of range; use {allowed}")


def check_choice(cfg: MethodConfig, name: str, choices: tuple[str, ...]) -> None:
    """Validate that ``cfg.<name>`` is one of ``choices``."""
    v = getattr(cfg, name)
    if v not in choices:
        raise ValueError(f"{type(cfg).__name__}.{name}={v!r} is not allowed; use one of {list(choices)}")
