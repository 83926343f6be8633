"""Compress to a target: search every family per layer against a measured objective and keep the
measured Pareto front of (top-1, objective).

A user says what is needed (``max_drop`` percentage points of top-1 at most, the smallest
``latency`` / ``bytes`` / ``macs``), not how. The search runs in five resumable stages, each kept
in ``OUT/auto_state.json``:

1. **baseline**: the float model's top-1 (validation slice and test split) and its own cost.
2. **sensitivity**: every candidate form of every layer *alone* (filter pruning at each ratio,
   Tucker-2 at each rank fraction, k-means at each bit width, int8), its top-1 drop on the
   validation slice without fine-tuning (the sensitivity analysis of Li et al. 2017, sec. 3.2,
   over all families), and for filter pruning the per-layer MAC fractions it leaves (pruning a
   layer's outputs also thins its consumers' inputs).
3. **costs**: per-layer cost tables measured on this CPU: the model built with every layer in one
   form (each filter ratio, each rank fraction, each weight format), each layer's milliseconds as
   ``engine`` runs it inside that model (:func:`torchslim.measure.latency.layer_latency`), its
   stored bytes, its MACs. A layer's cost in a mixed model is read from its table at its MAC
   fraction (linear interpolation between the measured fractions).
4. **search**: a greedy path (the marginal-utility allocation of HAQ / AMC's budgets without the
   learned agent): from the float model, repeatedly apply the one layer change with the largest
   cost saved per predicted point of top-1 lost (drops add, costs come from the tables), up to
   ``8 * max_drop`` predicted. ``points`` models are taken along the path at predicted drops that
   grow geometrically, since fine-tuning recovers part of the loss.
5. **points**: each chosen model is written as a recipe (structure stages, a fine-tune with
   knowledge distillation from the original model, k-means, int8) and run by
   :func:`torchslim.recipe.run_recipe` (its own folder, resumable); then it is measured on the test
   split in ``engine``, beside the float model measured the same way. The front (no point both
   more accurate and cheaper) goes to ``front.json``, ``front.md`` and ``front.png``; ``best.slim``
   is the cheapest point within ``max_drop`` (or, when none is, the most accurate, with a warning).

Every point is a ``.slim`` file that ``torchslim eval`` re-measures and a recipe that reproduces
it. The cost model ignores layers other than convolutions and fully connected ones (pooling,
activations): the front reports whole-model measurements, not the model's predictions.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from torchslim.core.state import slim_state

OBJECTIVES = {"latency": "latency_b256_ms", "bytes": "bytes", "macs": "macs"}
KEEP, FLOAT, INT8 = ("keep",), ("float",), ("int8", None)


class AutoError(ValueError):
    """Bad settings for the search, or a model it cannot search: the message says what to change."""


@dataclass(frozen=True)
class AutoConfig:
    """What to search and how long to fine-tune.

    Attributes:
        max_drop: top-1 percentage points the compressed model may lose against the float model
            (on the test split, in the same engine).
        objective: ``latency`` (batch ``batch`` in ``engine``), ``bytes`` (the ``.slim`` file) or
            ``macs``.
        engine: the engine that runs and times the models (``eager`` or ``pytorch`` for the
            per-layer tables; the points are also measured in it).
        filter_ratios / rank_fractions / kmeans_bits: candidate filter-pruning ratios (Li et al.),
            Tucker-2 rank fractions (Kim et al.), k-means bit widths (Han et al.); ``int8``: offer
            uniform int8 (Jacob et al.). An empty tuple (or False) leaves the family out.
        round_to: filter counts and ranks rounded up to multiples of this (default 8: int8 and float
            kernels slow down on odd channel counts: measured once here, vgg_small's second conv in
            int8 took 29.6 ms with 45 input channels and 4.8 ms with its 64; ONNX Runtime prefers 16).
        points: how many models along the search path are fine-tuned and measured.
        epochs / steps_per_epoch / lr: the fine-tune of each point (SGD, cosine), with
            distillation from the original model (T=4, alpha=0.9).
        val_images: images of the validation split that score the sensitivities.
        batch: the batch size latency is measured at.
        seed: seeds everything random (same seed, same front).
    """

    max_drop: float = 0.5
    objective: str = "latency"
    engine: str = "eager"
    filter_ratios: tuple[float, ...] = (0.25, 0.5, 0.7)
    rank_fractions: tuple[float, ...] = (0.5, 0.25)
    kmeans_bits: tuple[int, ...] = (6, 4)
    int8: bool = True
    round_to: int | None = 8
    points: int = 4
    epochs: int = 3
    steps_per_epoch: int | None = None
    lr: float = 0.01
    val_images: int = 2000
    batch: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("filter_ratios", "rank_fractions", "kmeans_bits"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop <= 100):
            raise AutoError(f"max_drop={self.max_drop!r}: use percentage points in [0, 100]")
        if self.objective not in OBJECTIVES:
            raise AutoError(f"objective={self.objective!r} is unknown; use one of {sorted(OBJECTIVES)}")
        if self.engine not in ("eager", "pytorch"):
            raise AutoError(f"engine={self.engine!r}: the per-layer cost tables need 'eager' or 'pytorch'")
        if not all(0 < r < 1 for r in self.filter_ratios + self.rank_fractions):
            raise AutoError("filter_ratios and rank_fractions must lie in (0, 1)")
        if not all(isinstance(b, int) and 1 <= b <= 8 for b in self.kmeans_bits):
            raise AutoError(f"kmeans_bits={self.kmeans_bits!r}: use integers in [1, 8]")
        if self.round_to is not None and (
            isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1
        ):
            raise AutoError(f"round_to={self.round_to!r}: use an integer >= 1 or None")
        for name, lo in (("points", 1), ("epochs", 0), ("val_images", 1), ("batch", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise AutoError(f"{name}={v!r}: use an integer >= {lo}")

    @staticmethod
    def quick(**changes: Any) -> AutoConfig:
        """A short run (5.5 minutes for vgg_small on 2 cores, measured once): fewer forms, three points,
        one fine-tune epoch of 100 batches each."""
        base = {
            "filter_ratios": (0.3, 0.6),
            "rank_fractions": (0.5,),
            "kmeans_bits": (4,),
            "points": 3,
            "epochs": 1,
            "steps_per_epoch": 100,
            "val_images": 1000,
        }
        return AutoConfig(**{**base, **changes})


# --- candidate forms ------------------------------------------------------------------------------


def _structure_config(choice: dict[str, list], round_to: int | None) -> list:
    """The structure stages for ``{layer: [kind, value]}``: one prune.filters, one lowrank.tucker."""
    from torchslim.lowrank import Tucker
    from torchslim.prune import Filters

    stages = []
    filt = {n: v for n, (k, v) in choice.items() if k == "filters"}
    if filt:
        stages.append(
            Filters(
                ratio=0.5, layers=tuple(filt), overrides={n: {"ratio": r} for n, r in filt.items()}, round_to=round_to
            )
        )
    tuck = {n: v for n, (k, v) in choice.items() if k == "tucker"}
    if tuck:
        stages.append(
            Tucker(
                selection="fixed",
                prefer="size",  # the search chose this layer by measured cost; no second opinion
                rank=0.5,
                layers=tuple(tuck),
                overrides={n: {"rank": r} for n, r in tuck.items()},
                round_to=round_to,
            )
        )
    return stages


def _subtree(name: str) -> str:
    """Selector of a layer and what factorization put in its place (``conv`` -> ``conv.0``...)."""
    return "re:" + name.replace(".", r"\.") + r"(\.\d+)*"


def _repr_config(choice: dict[str, list]) -> list:
    """The weight-format stages for ``{layer: [kind, value]}``: k-means first, then int8 (whose
    activation ranges are calibrated on the final weights of every other layer)."""
    from torchslim.quant import KMeans, Uniform

    stages = []
    km = {n: v for n, (k, v) in choice.items() if k == "kmeans"}
    if km:
        stages.append(
            KMeans(
                bits=8,
                layers=tuple(_subtree(n) for n in km),
                overrides={_subtree(n): {"bits": b} for n, b in km.items()},
            )
        )
    i8 = [n for n, (k, _) in choice.items() if k == "int8"]
    if i8:
        stages.append(Uniform(layers=tuple(_subtree(n) for n in i8), calib_batches=8))
    return stages


def _apply(model: nn.Module, configs: list, data, example) -> nn.Module:
    """compress_ then convert_ each config in turn (one recipe stage each, no fine-tuning)."""
    from torchslim.api import compress_, convert_

    for cfg in configs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = compress_(model, cfg, data=data, example_inputs=example)
            model = convert_(model)
    return model


def adapt_bn(model: nn.Module, loader, batches: int = 10) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` training batches (a cumulative
    average, no gradient): a pruned or factorized layer shifts the statistics its BatchNorm expects,
    and scoring it with stale ones ranks candidates by that mismatch instead of by what fine-tuning
    can recover (adaptive BN, Li et al. 2020, "EagleEye", sec. 3.2)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    moments = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(loader):
            if i == batches:
                break
            model(x)
    for m, mom in zip(norms, moments):
        m.momentum = mom
    return model.eval()


def _layers(model: nn.Module) -> dict[str, dict]:
    """Per conv / linear layer: which families fit it. The last layer (its outputs are the classes)
    keeps its outputs; Tucker-2 takes ungrouped convolutions with a kernel larger than 1x1."""
    from torchslim.core.state import slim_state

    kept = set(slim_state(model).read_outside)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in kept]
    out = {}
    for n in names:
        m = model.get_submodule(n)
        out[n] = {
            "filters": n != names[-1] and not (isinstance(m, nn.Conv2d) and m.groups > 1),
            "tucker": isinstance(m, nn.Conv2d) and m.groups == 1 and max(m.kernel_size) > 1 and m.in_channels > 8,
        }
    return out


def _options(cfg: AutoConfig, fits: dict) -> tuple[list, list]:
    structure = [KEEP]
    if fits["filters"]:
        structure += [("filters", r) for r in cfg.filter_ratios]
    if fits["tucker"]:
        structure += [("tucker", r) for r in cfg.rank_fractions]
    fmt = [FLOAT] + [("kmeans", b) for b in cfg.kmeans_bits] + ([("int8", None)] if cfg.int8 else [])
    return structure, fmt


# --- measurements ---------------------------------------------------------------------------------


def _macs_by_layer(model: nn.Module, shape: tuple, names) -> dict[str, int]:
    """MACs of each named layer, a factorized layer's parts summed under its original name."""
    from torchslim.measure.counts import layer_table

    rows = layer_table(model, shape)
    return {n: sum(r["macs"] for r in rows if r["name"] == n or r["name"].startswith(n + ".")) for n in names}


def _bytes_by_layer(model: nn.Module, names) -> dict[str, int]:
    """Stored bytes of each named layer's tensors (packed codes, int8 weights, CSR arrays as the
    runtime layers keep them), a factorized layer's parts summed under its original name."""
    mods = dict(model.named_modules())
    out = {}
    for n in names:
        parts = [m for k, m in mods.items() if k == n or k.startswith(n + ".")]
        seen: set[int] = set()
        total = 0
        for m in parts:
            for t in m.state_dict().values():
                if id(t) not in seen and torch.is_tensor(t):
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
        out[n] = total
    return out


def _ms_by_layer(model: nn.Module, shape: tuple, names, cfg: AutoConfig) -> dict[str, float]:
    from torchslim.measure.latency import layer_latency

    ms = layer_latency(model, shape, cfg.batch, engine=cfg.engine, min_run_time=0.1, rounds=1)
    return {n: sum(t for k, t in ms.items() if k == n or k.startswith(n + ".")) for n in names}


def _interp(points: list[list[float]], f: float) -> float:
    """Cost at MAC fraction ``f`` from measured ``[[fraction, cost], ...]``: linear between the
    neighbouring measurements, proportional to ``f`` below the smallest or from a single one."""
    pts = sorted(points)
    if len(pts) == 1 or f <= pts[0][0]:
        f0, c0 = pts[0]
        return c0 * f / f0 if f0 > 0 else c0
    for (f0, c0), (f1, c1) in zip(pts, pts[1:]):
        if f <= f1:
            return c0 + (c1 - c0) * (f - f0) / (f1 - f0) if f1 > f0 else c1
    f1, c1 = pts[-1]
    return c1 * f / f1


# --- the search -----------------------------------------------------------------------------------


@dataclass
class _Model:
    """What the greedy search knows: per layer, options' drops and MAC-fraction effects; tables."""

    sens: dict  # layer -> {option key: drop}
    fractions: dict  # layer -> {filters option key: {layer: MAC fraction}}
    tables: dict  # layer -> {"kind|format": [[fraction, cost], ...]}
    layers: list = field(default_factory=list)

    def cost(self, choice: dict) -> float:
        frac = {n: 1.0 for n in self.layers}
        for n, (s, _) in choice.items():
            if s[0] == "filters":
                for m, f in self.fractions[n][_key(s)].items():
                    frac[m] *= f
        total = 0.0
        for n in self.layers:
            s, q = choice.get(n, (KEEP, FLOAT))
            pts = self.tables[n].get(f"{_key(s) if s[0] == 'tucker' else 'dense'}|{_key(q)}")
            if not pts:  # a combination that did not build
                return math.inf
            total += _interp(pts, frac[n])
        return total

    def drop(self, choice: dict) -> float:
        """Predicted top-1 drop: the layers' drops alone, added; a negative drop (an option that scored
        better than float on the validation slice) counts as 0, since it is noise of the slice."""
        return sum(
            max(self.sens[n].get(_key(s), 0.0), 0.0) + max(self.sens[n].get(_key(q), 0.0), 0.0)
            for n, (s, q) in choice.items()
        )


def _key(option) -> str:
    return ":".join(str(v) for v in option if v is not None)


def _option(key: str) -> tuple:
    kind, _, v = key.partition(":")
    if not v:
        return (kind,) if kind in ("keep", "float") else (kind, None)
    return (kind, int(v) if kind == "kmeans" else float(v))


def greedy_path(model: _Model, options: dict, limit: float, start: dict | None = None) -> list[dict]:
    """Configurations of growing predicted drop: from all layers kept in float (then ``start``, a
    first move of several layers at once, when given), each step applies the single layer change
    with the largest ``cost saved / max(drop added, 0.01)`` whose predicted drop stays within
    ``limit`` (ties: the layer order). Returns ``[{"choice", "drop", "cost"}, ...]``, the float
    model first."""
    choice = {n: (KEEP, FLOAT) for n in model.layers}
    cost, drop = model.cost(choice), 0.0
    path = [{"choice": {n: [_key(s), _key(q)] for n, (s, q) in choice.items()}, "drop": 0.0, "cost": cost}]
    if start:
        choice.update(start)
        cost, drop = model.cost(choice), model.drop(choice)
        path.append({"choice": {n: [_key(s), _key(q)] for n, (s, q) in choice.items()}, "drop": drop, "cost": cost})
    while True:
        best = None
        for n in model.layers:
            structure, fmt = options[n]
            for s in structure:
                for q in fmt:
                    if (s, q) == choice[n]:
                        continue
                    trial = {**choice, n: (s, q)}
                    c, d = model.cost(trial), model.drop(trial)
                    if c >= cost - 1e-12 or d > limit:
                        continue
                    gain = (cost - c) / max(d - drop, 0.01)
                    if best is None or gain > best[0]:
                        best = (gain, n, (s, q), c, d)
        if best is None:
            return path
        _, n, sq, cost, drop = best
        choice[n] = sq
        path.append(
            {"choice": {k: [_key(s), _key(q)] for k, (s, q) in choice.items()}, "drop": round(drop, 4), "cost": cost}
        )


def local_optimum(model: _Model, options: dict, choice: dict, limit: float) -> dict:
    """The search's check on itself: from ``choice`` (``{layer: [structure, format]}`` keys, as in the
    path), repeatedly apply the move that lowers the predicted cost most among every single-layer
    change and every pair of changes on two layers (a pair can trade one layer's drop for another's
    saving, which the greedy path, one layer at a time and never undoing a step, cannot), keeping the
    predicted drop within ``limit``; stop when no move lowers the cost. Returns ``{"choice", "drop",
    "cost"}``: a 2-opt local optimum of the same predicted problem. How far it gets below the greedy
    path's point at the same drop measures what the greedy order loses (benchmarks/auto.py)."""
    cur = {n: (_option(s), _option(q)) for n, (s, q) in choice.items()}
    forms = {n: [(s, q) for s in st for q in fm] for n, (st, fm) in options.items()}
    cost = model.cost(cur)
    while True:
        best = None
        for i, a in enumerate(model.layers):
            for fa in forms[a]:
                if fa == cur[a]:
                    continue
                one = {**cur, a: fa}
                for b in [None, *model.layers[i + 1 :]]:
                    for fb in forms[b] if b else [None]:
                        if b and fb == cur[b]:
                            continue
                        trial = {**one, b: fb} if b else one
                        c = model.cost(trial)
                        if c < cost - 1e-9 and (best is None or c < best[0]) and model.drop(trial) <= limit + 1e-9:
                            best = (c, trial)
        if best is None:
            return {
                "choice": {n: [_key(s), _key(q)] for n, (s, q) in cur.items()},
                "drop": round(model.drop(cur), 4),
                "cost": cost,
            }
        cost, cur = best


def whole_model_int8(model: _Model, options: dict, limit: float) -> tuple[dict, dict | None]:
    """For latency, int8 is one decision for the whole model: a layer whose producer runs float
    quantizes its input and one whose consumer runs float dequantizes its output, which per-layer
    tables measured in all-int8 (or all-float) models do not see (measured on vgg_small: int8 on
    every layer but the first ran 37.2 ms, every layer int8 26.0 ms, float 78.5). So: every layer
    that takes int8 takes it (the search's first move) when the layers' int8 drops add up within
    ``limit``, else none does; k-means (no faster than float) is left out. Returns the options with
    the one weight format per layer and the first move (None: float)."""
    takes = [n for n in model.layers if INT8 in options[n][1]]
    move = {n: (KEEP, INT8) for n in takes}
    if takes and model.drop(move) <= limit and model.cost(move) < model.cost({}):
        return {n: (st, [INT8] if n in move else [FLOAT]) for n, (st, _) in options.items()}, move
    return {n: (st, [FLOAT]) for n, (st, _) in options.items()}, None


def pick_points(path: list[dict], max_drop: float, n: int) -> list[dict]:
    """``n`` configurations from the path: the last one within each predicted drop of a geometric
    ladder from ``max_drop`` to ``8 * max_drop`` (fine-tuning recovers part of the predicted loss,
    so the right place on the path is measured, not guessed); repeats removed."""
    ladder = [max_drop * 8 ** (i / max(n - 1, 1)) for i in range(n)] if max_drop > 0 else [0.0] * n
    out: list[dict] = []
    for b in ladder:
        within = [p for p in path[1:] if p["drop"] <= b + 1e-9]
        if within and within[-1] not in out:
            out.append(within[-1])
    return out


def pareto(rows: list[dict], key: str) -> list[dict]:
    """Rows no other row beats on both top-1 (higher) and ``key`` (lower)."""
    return [
        r
        for r in rows
        if not any(
            (o["top1"] >= r["top1"] and o[key] <= r[key]) and (o["top1"] > r["top1"] or o[key] < r[key]) for o in rows
        )
    ]


# --- the run --------------------------------------------------------------------------------------


def best_point(rows: list[dict], key: str, max_drop: float) -> tuple[dict, bool]:
    """The row with the smallest ``key`` among those within ``max_drop`` (and True), or, when none
    is, the most accurate row (and False)."""
    within = [r for r in rows if r["drop"] <= max_drop]
    if within:
        return min(within, key=lambda r: r[key]), True
    return max(rows, key=lambda r: r["top1"]), False


def _log(msg: str) -> None:
    print(f"[auto] {msg}", file=sys.stderr, flush=True)


def auto(
    model: nn.Module | str,
    data: Any,
    out_dir: str | Path,
    config: AutoConfig | None = None,
    *,
    model_import: str | None = None,
    model_kwargs: dict | None = None,
    restart: bool = False,
) -> dict:
    """Search compressed forms of ``model`` for ``config`` and write the measured front to ``out_dir``.

    Args:
        model: a trained model: an ``nn.Module`` from the registry (or loaded from a ``.slim``
            file), a path to a ``.slim`` file, or, with ``model_import``, the user's own model
            with its weights loaded.
        data: a :class:`torchslim.data.DataConfig` (or its dict): the training split fine-tunes
            and calibrates, the validation split scores the sensitivities, the test split measures
            the points.
        model_import: ``"package.module:factory"`` that builds the user's model (with
            ``model_kwargs``); the recipes of the points rebuild it from there.
        restart: discard a previous run in ``out_dir``.

    Returns the summary written to ``front.json``: ``baseline``, ``points`` (measured, with
    ``on_front``), ``best`` and ``met`` (whether a point lies within ``max_drop``).
    """
    from torchslim._files import atomic_write
    from torchslim.data import DataConfig, make_loaders
    from torchslim.export.slim import load, save
    from torchslim.train.loop import seed_everything

    cfg = config or AutoConfig()
    data = DataConfig.from_dict(data) if isinstance(data, dict) else data
    if not isinstance(data, DataConfig):
        raise AutoError(f"data must be a DataConfig or its dict, got {type(data).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "baseline.slim"
    if isinstance(model, (str, Path)):
        model = load(model)
    if not isinstance(model, nn.Module):
        raise AutoError(f"model must be an nn.Module or a .slim path, got {type(model).__name__}")
    if model_import is None and slim_state(model).arch is None:
        raise AutoError(
            "the model is not a registry model: pass model_import='package.module:factory' (CLI: --model) so "
            "that the points' recipes can rebuild it"
        )
    digest = hashlib.sha256(
        json.dumps(
            [dataclasses.asdict(cfg), data.to_dict(), model_import, model_kwargs], sort_keys=True, default=str
        ).encode()
        + b"".join(t.detach().cpu().numpy().tobytes() for t in model.state_dict().values())
    ).hexdigest()[:16]
    state_path = out / "auto_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() and not restart else {}
    if state and state.get("digest") != digest:
        raise AutoError(
            f"{out} holds a search of another model or settings; pass restart=True (--restart) or another folder"
        )
    if restart:
        for p in ("points", "front.json", "front.md", "front.png", "best.slim", "baseline.slim"):
            q = out / p
            shutil.rmtree(q) if q.is_dir() else q.unlink(missing_ok=True)
    state["digest"] = digest

    def keep() -> None:
        atomic_write(state_path, json.dumps(state, indent=1))

    seed_everything(cfg.seed)
    loaders = make_loaders(data, seed=cfg.seed)
    shape = (loaders.in_channels, loaders.input_size, loaders.input_size)
    example = next(iter(loaders.test))[0][:1]
    val = _slice(loaders.val or loaders.test, cfg.val_images, data.batch_size * 2)
    model.eval()
    if not base_path.exists():
        save(model, base_path, extra={"input_shape": list(shape)})
    fits = _layers(model)
    if not fits:
        raise AutoError("the model has no Conv2d or Linear layer to compress")
    names = list(fits)
    options = {n: _options(cfg, fits[n]) for n in names}

    run = _Inputs(model, cfg, shape, example, val, loaders.train, names)
    if "sens" not in state:
        state.update(_sensitivity(run, options))
        keep()
    if "tables" not in state:
        state["tables"] = _cost_tables(run, _measured_options(options, state["sens"]))
        keep()
    if "path" not in state:
        search, options, start, limit = problem(model, cfg, state)
        path = greedy_path(search, options, limit, start)
        state["path"] = path
        state["chosen"] = pick_points(path, cfg.max_drop, cfg.points)
        keep()
    if not state["chosen"]:
        raise AutoError(
            f"no form of any layer lowers the model's {cfg.objective} within a predicted drop of "
            f"{8 * max(cfg.max_drop, 0.05):.2f} pp (the layers' drops alone are in {state_path}); allow a larger "
            "max_drop, offer more forms (filter_ratios, rank_fractions, kmeans_bits, int8) or choose another objective"
        )
        _log(
            f"search: {len(state['path']) - 1} steps; points at predicted drops "
            + ", ".join(f"{p['drop']:.2f}" for p in state["chosen"])
        )
    return _run_points(cfg, data, loaders.test, out, state, keep, shape, model_import, model_kwargs)


def _measured_options(options: dict, sens: dict, tables: dict | None = None) -> dict:
    """The forms the sensitivity stage could apply (and, given the cost tables, that built there)."""
    options = {
        n: ([o for o in s if o == KEEP or _key(o) in sens[n]], [o for o in f if o == FLOAT or _key(o) in sens[n]])
        for n, (s, f) in options.items()
    }
    if tables is None:
        return options
    return {
        n: (
            [s for s in st if s[0] != "tucker" or any(k.startswith(_key(s) + "|") for k in tables[n])],
            [q for q in fm if f"dense|{_key(q)}" in tables[n]],
        )
        for n, (st, fm) in options.items()
    }


def problem(model: nn.Module, cfg: AutoConfig, state: dict) -> tuple[_Model, dict, dict | None, float]:
    """What the search optimizes, from a run's measured state (``auto_state.json``): the predicted
    model, each layer's forms, the first move (whole-model int8 for latency, or None) and the
    predicted-drop limit ``8 * max_drop``."""
    fits = _layers(model)
    names = list(fits)
    options = _measured_options({n: _options(cfg, fits[n]) for n in names}, state["sens"], state["tables"])
    search = _Model(state["sens"], state["fractions"], state["tables"], names)
    limit = 8 * max(cfg.max_drop, 0.05)
    start = None
    if cfg.objective == "latency":
        options, start = whole_model_int8(search, options, limit)
    return search, options, start, limit


@dataclass
class _Inputs:
    """What the measuring stages share: the float model, settings, input, data."""

    model: nn.Module
    cfg: AutoConfig
    shape: tuple
    example: torch.Tensor
    val: Any  # the validation slice that scores sensitivities
    calib: Any  # training batches: calibration and BatchNorm re-estimation
    names: list


def _sensitivity(run: _Inputs, options: dict) -> dict:
    """Each layer's forms alone: top-1 drop on the validation slice (structure after adaptive BN) and,
    for filter pruning, the MAC fraction it leaves each layer."""
    from torchslim.measure.accuracy import evaluate

    base_val = evaluate(run.model, run.val)["top1"]
    base_macs = _macs_by_layer(run.model, run.shape, run.names)
    sens: dict[str, dict] = {n: {} for n in run.names}
    fractions: dict[str, dict] = {n: {} for n in run.names}
    total = sum(len(s) - 1 + len(f) - 1 for s, f in options.values())
    done = 0
    for n in run.names:
        structure, fmt = options[n]
        for opt in structure[1:] + fmt[1:]:
            done += 1
            is_structure = opt[0] in ("filters", "tucker")
            stages = _structure_config({n: opt}, run.cfg.round_to) if is_structure else _repr_config({n: opt})
            try:
                trial = _apply(copy.deepcopy(run.model), stages, run.calib, run.example)
            except Exception as e:  # noqa: BLE001 - a form that does not fit this layer is left out, said once
                _log(f"{n}: {_key(opt)} does not apply ({type(e).__name__}: {e}); left out")
                continue
            if is_structure:
                adapt_bn(trial, run.calib)
            sens[n][_key(opt)] = round(base_val - evaluate(trial, run.val)["top1"], 3)
            if opt[0] == "filters":
                macs = _macs_by_layer(trial, run.shape, run.names)
                fractions[n][_key(opt)] = {m: macs[m] / base_macs[m] for m in run.names if macs[m] != base_macs[m]}
        _log(f"sensitivity {done}/{total}: {n} " + " ".join(f"{k}:{v:+.2f}" for k, v in sens[n].items()))
    return {"base_val": base_val, "sens": sens, "fractions": fractions}


def _cost_tables(run: _Inputs, options: dict) -> dict:
    """Per layer, ``{"structure|format": [[MAC fraction, cost], ...]}``: the model built with every
    layer that takes them in one structure and one weight format, each layer's cost measured there."""
    cfg = run.cfg
    tables: dict[str, dict] = {n: {} for n in run.names}
    structures = [KEEP] + [("filters", r) for r in cfg.filter_ratios] + [("tucker", r) for r in cfg.rank_fractions]
    formats = [FLOAT] + [("kmeans", b) for b in cfg.kmeans_bits] + ([("int8", None)] if cfg.int8 else [])
    base_macs = _macs_by_layer(run.model, run.shape, run.names)
    variants = []  # (structure, format, layers in that structure, in that format, model, MACs per layer)
    for i, s in enumerate(structures, 1):
        for q in formats:
            choice_s = {n: s for n in run.names if s in options[n][0]} if s != KEEP else {}
            choice_q = {n: q for n in run.names if q in options[n][1]} if q != FLOAT else {}
            if s != KEEP and not choice_s or q != FLOAT and not choice_q:
                continue
            stages = _structure_config(choice_s, cfg.round_to) + _repr_config(choice_q)
            try:
                variant = _apply(copy.deepcopy(run.model), stages, run.calib, run.example)
            except Exception as e:  # noqa: BLE001 - every layer in one form may not build: that table stays empty
                _log(f"costs: all layers {_key(s)} + {_key(q)} did not build ({type(e).__name__}: {e})")
                continue
            variants.append((s, q, choice_s, choice_q, variant, _macs_by_layer(variant, run.shape, run.names)))
        _log(f"costs {i}/{len(structures)}: {_key(s)} built in {len(formats)} formats")
    costs = [_objective_by_layer(cfg, v[4], run.shape, run.names, v[5]) for v in variants]
    for r in range(2 if cfg.objective == "latency" else 0):  # each variant again, later: the smallest
        _log(f"costs: timing pass {r + 2}/3")  # time of passes far apart survives a burst of other load
        for c, v in zip(costs, variants):
            c.update({n: min(t, c[n]) for n, t in _objective_by_layer(cfg, v[4], run.shape, run.names, v[5]).items()})
    for (s, q, choice_s, choice_q, _, macs), cost in zip(variants, costs):
        kind = _key(s) if s[0] == "tucker" else "dense"
        for n in run.names:
            if (s[0] == "tucker" and n not in choice_s) or (q != FLOAT and n not in choice_q):
                continue
            f = 1.0 if s[0] == "tucker" else macs[n] / base_macs[n] if base_macs[n] else 1.0
            tables[n].setdefault(f"{kind}|{_key(q)}", []).append([round(f, 6), cost[n]])
    return tables


def _objective_by_layer(cfg: AutoConfig, model: nn.Module, shape: tuple, names, macs: dict) -> dict[str, float]:
    if cfg.objective == "macs":
        return {n: float(macs[n]) for n in names}
    if cfg.objective == "bytes":
        return {n: float(b) for n, b in _bytes_by_layer(model, names).items()}
    return _ms_by_layer(model, shape, names, cfg)


def _slice(loader, n: int, batch: int):
    from torch.utils.data import DataLoader, Subset

    ds = loader.dataset
    return DataLoader(Subset(ds, range(min(n, len(ds)))), batch_size=batch, collate_fn=loader.collate_fn)


def recipe_for(
    choice: dict, cfg: AutoConfig, data, baseline: Path, model_import: str | None, kwargs: dict | None, name: str
) -> dict:
    """The recipe that builds one point: structure stages, a fine-tune distilled from the original
    model, then the weight formats; public method configs only, so it reruns with ``torchslim run``."""
    structure = {n: _option(s) for n, (s, _) in choice.items() if s != "keep"}
    fmt = {n: _option(q) for n, (_, q) in choice.items() if q != "float"}
    stages = [c.to_dict() for c in _structure_config(structure, cfg.round_to)]
    tune = {
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "seed": cfg.seed,
        **({"steps_per_epoch": cfg.steps_per_epoch} if cfg.steps_per_epoch else {}),
        "distill": {"teacher": "original", "T": 4.0, "alpha": 0.9},
    }
    if cfg.epochs:
        if stages:
            stages[-1]["finetune"] = tune
        else:
            stages.append({"finetune": tune})
    stages += [c.to_dict() for c in _repr_config(fmt)]
    for s in stages:  # defaults out: the recipe says what this point changes
        s.pop("exclude", None)
        if not s.get("overrides", True):
            s.pop("overrides")
    model = (
        {"import": model_import, "kwargs": kwargs or {}, "weights": str(baseline)}
        if model_import
        else {"from": str(baseline)}
    )
    return {
        "name": name,
        "model": model,
        "data": {k: v for k, v in data.to_dict().items() if v is not None},
        "train": {"epochs": 0, "seed": cfg.seed},
        "stages": stages,
        "export": {"latency": False},
    }


def _run_points(cfg, data, test, out: Path, state: dict, keep, shape, model_import, model_kwargs) -> dict:
    import yaml

    from torchslim._files import atomic_write
    from torchslim.export.slim import load
    from torchslim.measure.report import measure
    from torchslim.recipe import run_recipe

    key = OBJECTIVES[cfg.objective]
    if "baseline" not in state:
        _log(f"measuring the float model ({cfg.engine} engine)")
        state["baseline"] = {
            "point": "float",
            **_row(
                measure(
                    load(out / "baseline.slim", model=_fresh(model_import, model_kwargs)),
                    shape,
                    loader=test,
                    path=out / "baseline.slim",
                    engine=cfg.engine,
                    big_batch=cfg.batch,
                )
            ),
        }
        keep()
    base = state["baseline"]
    state.setdefault("points", [])
    for i, p in enumerate(state["chosen"]):
        name = f"point{i:02d}"
        if any(r["point"] == name for r in state["points"]):
            continue
        folder = out / "points" / name
        recipe = recipe_for(p["choice"], cfg, data, (out / "baseline.slim").resolve(), model_import, model_kwargs, name)
        folder.parent.mkdir(exist_ok=True)
        atomic_write(out / "points" / f"{name}.yaml", yaml.safe_dump(recipe, sort_keys=False))
        _log(f"point {i + 1}/{len(state['chosen'])}: predicted drop {p['drop']:.2f} pp; recipe points/{name}.yaml")
        run_recipe(recipe, folder)
        path = out / "points" / f"{name}.slim"
        atomic_write(path, (folder / "model.slim").read_bytes())
        row = _row(
            measure(
                load(path, model=_fresh(model_import, model_kwargs)),
                shape,
                loader=test,
                path=path,
                engine=cfg.engine,
                big_batch=cfg.batch,
            )
        )
        row.update(point=name, predicted_drop=p["drop"], choice=p["choice"])
        state["points"].append(row)
        keep()
        _log(
            f"{name}: top1 {row['top1']:.2f} (float {base['top1']:.2f}), {key} {row[key]:,.4g} (float {base[key]:,.4g})"
        )
    rows = state["points"]
    for r in rows:
        r["drop"] = round(base["top1"] - r["top1"], 2)
        for k in ("bytes", "macs", "latency_b1_ms", "latency_b256_ms"):
            if r.get(k) and base.get(k):
                r[f"{k}_vs_float"] = round(base[k] / r[k], 2)
    front = pareto(rows, key)
    for r in rows:
        r["on_front"] = r in front
    best, met = best_point(rows, key, cfg.max_drop)
    if not met:
        warnings.warn(
            f"no point lies within max_drop={cfg.max_drop} pp; best.slim is the most accurate one ({best['point']}: "
            f"-{best['drop']:.2f} pp): fine-tune longer (epochs) or allow a larger drop"
        )
    atomic_write(out / "best.slim", (out / "points" / f"{best['point']}.slim").read_bytes())
    summary = {
        "objective": cfg.objective,
        "max_drop": cfg.max_drop,
        "engine": cfg.engine,
        "config": dataclasses.asdict(cfg),
        "baseline": base,
        "points": rows,
        "best": best["point"],
        "met": met,
    }
    atomic_write(out / "front.json", json.dumps(summary, indent=1))
    atomic_write(out / "front.md", front_markdown(summary))
    plot_front(summary, out / "front.png")
    _log(f"best: {best['point']} ({'within' if met else 'OUTSIDE'} {cfg.max_drop} pp) -> {out / 'best.slim'}")
    return summary


def _fresh(model_import, kwargs):
    from torchslim.imported import build_imported

    return build_imported(model_import, kwargs) if model_import else None


def _row(m: dict) -> dict:
    return {
        k: m[k]
        for k in ("top1", "bytes", "params", "macs", "latency_b1_ms", "latency_b256_ms", "engine", "cpu")
        if k in m
    }


FRONT_COLUMNS = (
    "point",
    "top1",
    "drop",
    "bytes",
    "bytes_vs_float",
    "macs",
    "latency_b1_ms",
    "latency_b256_ms",
    "latency_b256_ms_vs_float",
    "on_front",
)


def front_markdown(summary: dict) -> str:
    """The points beside the float model: top-1, drop, bytes, MACs, latency and ratios to float."""
    from torchslim.measure.report import to_markdown

    base = summary["baseline"]
    head = (
        f"objective {summary['objective']}, max drop {summary['max_drop']} pp, engine {summary['engine']}, "
        f"CPU {base.get('cpu', '?')}; best: {summary['best']}"
        + ("" if summary["met"] else f" (no point within {summary['max_drop']} pp: the most accurate)")
    )
    rows = [{**base, "point": "float", "drop": 0.0}, *summary["points"]]
    return head + "\n\n" + to_markdown(rows, FRONT_COLUMNS)


def plot_front(summary: dict, path: Path, others: list[dict] | None = None) -> None:
    """Top-1 against the objective (log scale): the points, the front, the float model and any
    ``others`` (``{"name", "top1", objective key}``, e.g. single-family artifacts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = OBJECTIVES[summary["objective"]]
    rows = summary["points"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r[key] for r in rows], [r["top1"] for r in rows], c="tab:blue", label="auto points")
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r[key])
    ax.plot([r[key] for r in front], [r["top1"] for r in front], c="tab:blue")
    b = summary["baseline"]
    ax.scatter([b[key]], [b["top1"]], c="k", marker="*", s=120, label="float")
    for o in others or []:
        ax.scatter([o[key]], [o["top1"]], c="tab:orange", marker="s")
        ax.annotate(o["name"], (o[key], o["top1"]), fontsize=7)
    ax.axhline(b["top1"] - summary["max_drop"], ls="--", c="gray", lw=0.8, label=f"-{summary['max_drop']} pp")
    ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("top-1 %")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
