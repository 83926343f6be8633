"""Recipes: a validated YAML schema and a stage runner that resumes after a crash.

Schema (unknown keys are errors)::

    name: quickstart                  # run folder: runs/<name> unless --out is given
    model: {name: lenet5, kwargs: {}, from: null}   # 'from': start from a .slim file
    # or a user's own model by import path (weights: .slim, .safetensors or a weights-only .pt):
    # model: {import: "pkg.module:factory", kwargs: {}, weights: path}
    data: {name: fashion_mnist, batch_size: 128, ...}   # torchslim.data.DataConfig
    train: {epochs: 5, optimizer: adam, lr: 0.001, ...} # torchslim.train.TrainConfig (+ distill:
                                      # {teacher: path.slim, ...} trains the model as a student)
    stages:
      - method: core.fold_bn          # a registered method name
        name: fold                    # optional label
        finetune: {epochs: 1, ...}    # optional TrainConfig for fine-tuning after prepare, may name
                                      # distill: {teacher: original | path.slim, T: 4, alpha: 0.9}
        ...                           # the method's own config fields
      - finetune: {epochs: 2, ...}    # a stage without a method only fine-tunes
    export: {latency: true, entropy: huffman}   # entropy: Huffman-code indices and gaps

Run folder: ``recipe.yaml``, ``state.json`` (finished steps), per-step
``NN_<step>.slim`` and training checkpoints, ``model.slim``, ``report.json``,
``report.md``. A rerun skips finished steps and resumes training mid-step
from the last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchslim.core.config import MethodConfig
from torchslim.data import DataConfig
from torchslim.train.loop import TrainConfig

_TOP = {"name", "model", "data", "train", "stages", "export"}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RUN_FILE = re.compile(r"(state\.json|recipe\.yaml|model\.slim|report\.(json|md)|\d\d_[\w.-]+\.slim|ckpt_[\w.-]+)")
_MODEL = {"name", "kwargs", "from", "import", "weights"}
_STAGE_RESERVED = {"method", "name", "finetune"}
_EXPORT = {"latency", "entropy"}


class RecipeError(ValueError):
    """A recipe is malformed: the message names the field, the value and what is allowed."""


@dataclass(frozen=True)
class Stage:
    name: str
    config: MethodConfig | None  # None: a fine-tuning-only stage
    finetune: TrainConfig | None
    distill: dict | None = None  # torchslim.distill.Distill fields; teacher: "original" or a .slim path


_DISTILL = {"teacher", "T", "alpha", "loss", "standardize", "online", "teacher_lr", "hints", "hint_weight", "cache"}


def _distill_fields(spec: dict) -> dict:
    """Distill keyword arguments from a recipe mapping (``cache: true`` -> a fresh cache)."""
    out = {k: v for k, v in spec.items() if k != "teacher"}
    out["cache"] = {} if out.get("cache") else None
    return out


def _train_and_distill(where: str, d: Any, original_ok: bool) -> tuple[TrainConfig, dict | None]:
    """A TrainConfig mapping with an optional ``distill`` sub-mapping, both validated."""
    d = dict(d or {})
    distill = d.pop("distill", None)
    train = TrainConfig.from_dict(d, where)
    if distill is None:
        return train, None
    distill = dict(_keys(f"{where}.distill", distill, _DISTILL))
    teacher = distill.get("teacher")
    if not isinstance(teacher, str) or (teacher == "original" and not original_ok):
        allowed = "'original' (the recipe's baseline model) or a .slim path" if original_ok else "a .slim path"
        raise RecipeError(f"{where}.distill.teacher={teacher!r}; use {allowed}")
    if teacher != "original" and not Path(teacher).is_file():
        raise RecipeError(f"{where}.distill.teacher: no file {teacher!r} (give the teacher's .slim path)")
    import torch.nn as nn

    from torchslim.distill import Distill

    Distill(teacher=nn.Identity(), **_distill_fields(distill))  # range checks
    return train, distill


@dataclass(frozen=True)
class Recipe:
    name: str
    model: dict[str, Any]
    data: DataConfig
    train: TrainConfig
    stages: tuple[Stage, ...]
    export: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    distill: dict | None = None  # train.distill: the baseline is trained as a student

    def digest(self) -> str:
        """Hash of the recipe minus the data location (so --data-dir does not break resume)."""
        raw = json.loads(json.dumps(self.raw))
        raw.get("data", {}).pop("dir", None)
        return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def _keys(where: str, d: Any, allowed: set[str]) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise RecipeError(f"{where} must be a mapping, got {d!r}")
    bad = set(d) - allowed
    if bad:
        raise RecipeError(f"{where}: unknown key(s) {sorted(bad)}; allowed: {sorted(allowed)}")
    return d


MAX_NODES, MAX_DEPTH = 20_000, 32


def _check_size(raw: Any) -> None:
    """Refuse a recipe whose expanded size is out of all proportion (a YAML alias bomb expands a 1 KB
    file to billions of nodes): count nodes as they would be walked, aliases expanded, with a budget."""
    todo, seen = [(raw, 0)], 0
    while todo:
        node, depth = todo.pop()
        seen += 1
        if seen > MAX_NODES or depth > MAX_DEPTH:
            raise RecipeError(
                f"the recipe expands to more than {MAX_NODES:,} values or nests deeper than {MAX_DEPTH} "
                "(YAML aliases?); write it out plainly"
            )
        if isinstance(node, dict):
            todo.extend((v, depth + 1) for v in node.values())
            todo.extend((k, depth + 1) for k in node)
        elif isinstance(node, (list, tuple)):
            todo.extend((v, depth + 1) for v in node)


def parse_recipe(src: str | os.PathLike | dict, data_dir: str | None = None) -> Recipe:
    """Validate a recipe (path, YAML text or dict) and return it."""
    if isinstance(src, dict):
        raw = src
    else:
        p = Path(src)
        if not p.exists():
            raise RecipeError(f"recipe file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text())
        except (yaml.YAMLError, RecursionError) as e:
            raise RecipeError(f"{p}: not valid YAML: {e}") from None
    _check_size(raw)
    raw = _keys("recipe", raw, _TOP)
    name = raw.get("name", "run")
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise RecipeError(
            f"name={name!r} must be one folder name: letters, digits, '.', '_' or '-', starting with a letter or "
            "digit (it names the run folder runs/<name>)"
        )
    model = dict(_keys("model", raw.get("model"), _MODEL))
    if model.get("import") is not None:
        if model.get("name") or model.get("from"):
            raise RecipeError("model.import names a user model; do not combine it with model.name or model.from")
        from torchslim.imported import resolve_factory

        try:
            resolve_factory(model["import"])
        except ValueError as e:
            raise RecipeError(f"model.import: {e}") from None
        if model.get("weights") is not None and not Path(str(model["weights"])).is_file():
            raise RecipeError(f"model.weights: no file {model['weights']!r}")
    elif model.get("weights") is not None:
        raise RecipeError("model.weights goes with model.import (a registry model starts from model.from)")
    elif not isinstance(model.get("name"), str) and not model.get("from"):
        raise RecipeError(
            "model.name is required (a registry model, see 'torchslim list models'), model.from: a .slim file, "
            "or model.import: 'package.module:factory' for your own model"
        )
    if not isinstance(model.setdefault("kwargs", {}), dict):
        raise RecipeError(f"model.kwargs must be a mapping, got {model['kwargs']!r}")
    if model.get("name"):
        from torchslim.models import list_models

        if model["name"] not in list_models():
            raise RecipeError(f"model.name={model['name']!r} is unknown; allowed: {list_models()}")
    try:
        data = DataConfig.from_dict(
            {
                **_keys("data", raw.get("data"), set(DataConfig.__dataclass_fields__)),
                **({"dir": data_dir} if data_dir else {}),
            }
        )
        train, train_distill = _train_and_distill("train", raw.get("train"), original_ok=False)
    except ValueError as e:
        raise RecipeError(str(e)) from None
    stages_raw = raw.get("stages") or []
    if not isinstance(stages_raw, list):
        raise RecipeError(f"stages must be a list, got {stages_raw!r}")
    stages = []
    for i, s in enumerate(stages_raw, 1):
        if not isinstance(s, dict) or ("method" not in s and "finetune" not in s):
            raise RecipeError(f"stages[{i}] must be a mapping with a 'method' key (or only 'finetune'), got {s!r}")
        fields = {k: v for k, v in s.items() if k not in _STAGE_RESERVED}
        if "method" not in s and fields:
            raise RecipeError(f"stages[{i}]: fields {sorted(fields)} need a 'method'")
        try:
            cfg = MethodConfig.from_dict({"method": s["method"], **fields}) if "method" in s else None
            ft, distill = (
                _train_and_distill(f"stages[{i}].finetune", s["finetune"], True) if s.get("finetune") else (None, None)
            )
        except RecipeError:
            raise
        except ValueError as e:
            raise RecipeError(f"stages[{i}]: {e}") from None
        stages.append(Stage(str(s.get("name", s.get("method", "finetune"))), cfg, ft, distill))
    export = _keys("export", raw.get("export"), _EXPORT)
    if export.get("entropy") not in (None, "huffman"):
        raise RecipeError(f"export.entropy={export['entropy']!r} is not allowed; use huffman or leave it out")
    return Recipe(name, model, data, train, tuple(stages), export, raw, train_distill)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_recipe(
    src: str | os.PathLike | dict,
    out_dir: str | os.PathLike | None = None,
    *,
    data_dir: str | None = None,
    restart: bool = False,
    latency: bool | None = None,
) -> list[dict]:
    """Run a recipe: train or load the model, run every stage, write model + report.

    Returns the report rows (baseline first, then one per stage). Safe to rerun
    after a crash: finished steps are skipped.
    """
    recipe = parse_recipe(src, data_dir)
    out = Path(out_dir or Path("runs") / recipe.name)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _check_run_folder(out)
        with _RunLock(out):
            return _run(recipe, out, restart, latency)
    except OSError as e:  # disk full, a read-only folder: one line naming the path, nothing half-written
        raise RecipeError(f"{e.filename or out}: {e.strerror or e}; free space or choose another --out") from None


def _check_run_folder(out: Path) -> None:
    """A run folder holds only what runs wrote: ``--out`` into a folder with other entries and no
    run of ours (``state.json``, a checkpoint) is refused, and so is a folder whose run entries are
    symbolic links (cleaning or ``--restart`` would follow them into another folder)."""
    entries = [p for p in out.iterdir() if p.name != ".lock"]
    ours = [p for p in entries if _RUN_FILE.fullmatch(p.name) or _is_our_tmp(p.name)]
    links = [p.name for p in ours if p.is_symlink()]
    if links:
        raise RecipeError(f"{out}: {links[:3]} are symbolic links; a run folder holds only files its runs wrote")
    if entries and not any(p.name == "state.json" or p.name.startswith("ckpt_") for p in ours):
        raise RecipeError(
            f"{out} is not empty and holds no torchslim run (no state.json); choose a new or empty folder for --out"
        )


def _is_our_tmp(name: str) -> bool:
    """A temporary file of :func:`~torchslim._files.atomic_write` for a run file."""
    from torchslim._files import TMP_SUFFIX

    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return False
    target = name[1 : -len(TMP_SUFFIX)].rsplit(".", 1)[0]
    return bool(_RUN_FILE.fullmatch(target) or target in ("last.ckpt",))


class _RunLock:
    """An exclusive OS lock on the run folder (released on exit or crash): a second run into the same
    folder is an error instead of two runs overwriting each other."""

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"

    def __enter__(self) -> _RunLock:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError:
            os.close(self.fd)
            raise RecipeError(
                f"{self.path.parent} is in use by another torchslim run; wait for it or pass --out DIR"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # closing releases the lock


def _restart(out: Path, state_path: Path) -> None:
    """Remove what an earlier run wrote in ``out`` (the files its state lists), nothing else."""
    try:
        files = json.loads(state_path.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        files = []
    for name in [*files, "state.json"]:
        if not isinstance(name, str) or not _RUN_FILE.fullmatch(name):
            continue  # a state file that names anything else is not trusted
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _run(recipe: Recipe, out: Path, restart: bool, latency: bool | None) -> list[dict]:
    from torchslim._files import atomic_write
    from torchslim.api import compress_, convert_, method_callbacks
    from torchslim.data import make_loaders
    from torchslim.export.slim import load, save
    from torchslim.measure.report import measure, to_table, write_report
    from torchslim.models import create_model
    from torchslim.train.loop import fit, seed_everything

    state_path = out / "state.json"
    ckpts = [d for d in out.glob("ckpt_*") if d.is_dir() and not d.is_symlink()]
    for stale in [p for d in (out, *ckpts) for p in d.iterdir()]:  # left by a killed write
        if _is_our_tmp(stale.name) and not stale.is_symlink():
            stale.unlink(missing_ok=True)
    if restart:
        _restart(out, state_path)
    try:
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
    except ValueError:
        raise RecipeError(f"{state_path} is not valid JSON; pass --restart to start the run over") from None
    if state and state.get("digest") != recipe.digest():
        raise RecipeError(
            f"{out} holds a run of a different recipe; pass --restart to start over or --out DIR for a new folder"
        )
    state.setdefault("digest", recipe.digest())
    state.setdefault("done", [])
    state.setdefault("rows", [])
    state.setdefault("files", [])

    def wrote(*names: str) -> None:
        state["files"].extend(n for n in names if n not in state["files"])

    def save_state() -> None:
        atomic_write(state_path, json.dumps(state, indent=1))

    atomic_write(out / "recipe.yaml", yaml.safe_dump(recipe.raw, sort_keys=False))
    wrote("recipe.yaml")
    save_state()
    latency = recipe.export.get("latency", True) if latency is None else latency

    loaders = make_loaders(recipe.data, seed=recipe.train.seed)
    shape = (loaders.in_channels, loaders.input_size, loaders.input_size)
    extra = {"data": {**recipe.data.to_dict(), "dir": None}, "input_shape": list(shape)}
    imported = recipe.model.get("import")

    def fresh():
        """A new instance of a user's model (for loading step files), or None for registry models."""
        from torchslim.imported import build_imported

        return build_imported(imported, recipe.model["kwargs"]) if imported else None

    def model_name(m) -> str:
        return imported or m.torchslim.arch["name"]

    def distill_callbacks(spec: dict | None) -> list:
        """[Distill(teacher)] for a ``distill`` mapping; teacher 'original' = this run's baseline file."""
        if not spec:
            return []
        from torchslim.distill import Distill

        if spec["teacher"] == "original":  # this run's baseline: a user's model is rebuilt from its import
            return [Distill(teacher=load(out / "00_baseline.slim", model=fresh()), **_distill_fields(spec))]
        return [Distill(teacher=load(spec["teacher"]), **_distill_fields(spec))]

    def finish(step: str, model, method: str, train_seconds: float = 0.0) -> None:
        path = out / f"{len(state['done']):02d}_{step}.slim"
        save(model, path, recipe=recipe.raw, extra={**extra, "step": step})
        row = {
            "model": model_name(model),
            "method": method,
            "step": step,
            **measure(model, shape, loader=loaders.test, path=path, latency=latency),
            "train_seconds": round(train_seconds, 1),
        }
        state["done"].append(step)
        state["rows"].append(row)
        wrote(path.name, *(f"ckpt_{step}",) * (out / f"ckpt_{step}").is_dir())
        save_state()
        _log(f"[{recipe.name}] {step}: top1 {row['top1']:.2f}%  {row['bytes']:,} bytes  {row['macs']:,} MACs")

    steps = ["baseline"] + [f"stage{i}_{s.name}" for i, s in enumerate(recipe.stages, 1)]
    model = None
    if state["done"]:
        last = state["done"][-1]
        model = load(out / f"{len(state['done']) - 1:02d}_{last}.slim", model=fresh())
        total = len(steps) + bool(recipe.export.get("entropy"))
        _log(f"[{recipe.name}] resuming after step '{last}' ({len(state['done'])}/{total} done)")
    for i, step in enumerate(steps):
        if step in state["done"]:
            continue
        if i == 0:
            seconds = 0.0
            seed_everything(recipe.train.seed)  # before anything random is built: same seed, same model
            if recipe.model.get("from"):
                model = load(recipe.model["from"])
                _log(f"[{recipe.name}] baseline loaded from {recipe.model['from']}")
            elif imported and recipe.model.get("weights"):
                from torchslim.imported import load_weights

                model = load_weights(fresh(), recipe.model["weights"])
                _log(f"[{recipe.name}] {imported} loaded from {recipe.model['weights']}")
            else:
                model = (
                    fresh()
                    if imported
                    else create_model(
                        recipe.model["name"],
                        num_classes=loaders.num_classes,
                        in_channels=loaders.in_channels,
                        input_size=loaders.input_size,
                        **recipe.model["kwargs"],
                    )
                )
                _log(
                    f"[{recipe.name}] training {imported or recipe.model['name']} for {recipe.train.epochs} epochs"
                    + (f", distilled from {recipe.distill['teacher']}" if recipe.distill else "")
                )
                seconds = fit(
                    model,
                    loaders.train,
                    recipe.train,
                    val_loader=loaders.val,
                    callbacks=distill_callbacks(recipe.distill),
                    checkpoint_dir=out / "ckpt_baseline",
                    desc="baseline",
                )["seconds"]
            finish(step, model, "float", seconds)
            continue
        stage = recipe.stages[i - 1]
        method = stage.config.method if stage.config is not None else "finetune"
        _log(f"[{recipe.name}] stage {i}/{len(recipe.stages)}: {method}")
        if stage.config is not None:
            example = next(iter(loaders.test))[0][:1]
            compress_(model, stage.config, data=loaders.train, example_inputs=example)
        seconds = 0.0
        if stage.finetune is not None and stage.finetune.epochs > 0:
            seconds = fit(
                model,
                loaders.train,
                stage.finetune,
                val_loader=loaders.val,
                callbacks=method_callbacks(model) + distill_callbacks(stage.distill),
                checkpoint_dir=out / f"ckpt_{step}",
                desc=step,
            )["seconds"]
        convert_(model)
        finish(step, model, method, seconds)

    final = out / f"{len(state['done']) - 1:02d}_{state['done'][-1]}.slim"
    if recipe.export.get("entropy") and state["done"][-1] != "export":
        # Deep Compression's last stage: the same model, indices and gaps Huffman-coded.
        path = out / f"{len(state['done']):02d}_export.slim"
        save(load(final, model=fresh()), path, recipe=recipe.raw, extra={**extra, "step": "export"}, entropy="huffman")
        coded = load(path, model=fresh())  # measured from the decoded file, which proves the round trip
        state["done"].append("export")
        state["rows"].append(
            {
                "model": model_name(coded),
                "method": "huffman",
                "step": "export",
                **measure(coded, shape, loader=loaders.test, path=path, latency=latency),
            }
        )
        wrote(path.name)
        save_state()
        final = path
    atomic_write(out / "model.slim", final.read_bytes())
    wrote("model.slim", "report.json", "report.md")
    save_state()
    rows = [dict(r) for r in state["rows"]]
    if recipe.distill:  # a student: compare every step with its teacher
        src = recipe.distill["teacher"]
        t = {
            "step": "teacher",
            "method": "teacher",
            **measure(load(src), shape, loader=loaders.test, path=src, latency=latency),
        }
        for r in rows:
            r.update(
                top1_vs_teacher=round(r["top1"] - t["top1"], 2),
                teacher_params_ratio=round(t["params"] / r["params"], 2),
                teacher_macs_ratio=round(t["macs"] / r["macs"], 2),
            )
        rows.insert(0, t)
    write_report(rows, out / "report", title=f"torchslim run: {recipe.name}")
    cols = [
        "step",
        "method",
        "top1",
        "bytes",
        "params",
        "nonzeros",
        "macs",
        "latency_b1_ms",
        "latency_b256_ms",
        "top1_vs_teacher",
        "teacher_params_ratio",
        "teacher_macs_ratio",
    ]
    print(to_table(rows, [c for c in cols if any(c in r for r in rows)]))
    print(f"\nwrote {out / 'model.slim'}, {out / 'report.json'}, {out / 'report.md'}")
    return state["rows"]
