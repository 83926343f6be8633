"""Command line: ``torchslim run | distill | eval | inspect | export | sensitivity | list``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torchslim.data import DataError


def _cmd_run(a: argparse.Namespace) -> int:
    from torchslim.recipe import run_recipe

    run_recipe(a.recipe, a.out, data_dir=a.data_dir, restart=a.restart, latency=False if a.no_latency else None)
    return 0


def _cmd_distill(a: argparse.Namespace) -> int:
    """Train a registry student from a teacher file: a recipe with ``train.distill``."""
    from torchslim.recipe import run_recipe

    teacher = {"teacher": a.teacher, "T": a.T, "alpha": a.alpha, "loss": a.loss}
    recipe = {
        "name": a.name or f"distill_{a.student}",
        "model": {"import" if ":" in a.student else "name": a.student, "kwargs": json.loads(a.kwargs)},
        "data": {"name": "fashion_mnist", "batch_size": 128, "augment": a.augment},
        "train": {"epochs": a.epochs, "optimizer": a.optimizer, "lr": a.lr, "seed": a.seed, "distill": teacher},
    }
    run_recipe(recipe, a.out, data_dir=a.data_dir, restart=a.restart, latency=False if a.no_latency else None)
    return 0


def _model_data(path: str, data_dir: str | None, model_spec: str | None = None):
    """The file's model (a user model needs ``--model pkg.module:factory``), data config and input
    shape (:func:`torchslim.core.surgery.input_shape`: None when the file does not record it)."""
    from torchslim.core.surgery import input_shape
    from torchslim.data import DataConfig
    from torchslim.export.slim import SlimFileError, load

    model = load(path, model=_fresh_model(path, model_spec))
    header = model.torchslim.header
    d = dict((header.get("extra") or {}).get("data") or {"name": "fashion_mnist"})
    d["dir"] = data_dir or None
    d.pop("subset", None)  # reported numbers always use the full test split
    try:
        cfg = DataConfig.from_dict(d)
    except (TypeError, ValueError) as e:  # the file's recorded data config is data from the file
        raise SlimFileError(f"{path}: extra.data: {str(e).splitlines()[0][:200]}") from None
    return model, cfg, input_shape(model)


def _fresh_model(path: str, model_spec: str | None):
    """A user's float model from ``--model pkg.module:factory`` (None for registry files)."""
    if not model_spec:
        return None
    from torchslim.export.slim import file_header
    from torchslim.imported import build_imported

    made_by = (file_header(path).get("recipe") or {}).get("model") or {}
    kwargs = made_by.get("kwargs") if made_by.get("import") == model_spec else None  # data, never code
    return build_imported(model_spec, kwargs)


def _shape_or_refuse(path: str, shape: tuple | None) -> tuple:
    if shape is None:
        raise ValueError(
            f"{path}: the file does not record its model's input shape (saved without example inputs); "
            "save it again after compress_(model, config, example_inputs=x)"
        )
    return shape


def _cmd_eval(a: argparse.Namespace) -> int:
    from torch.utils.data import DataLoader

    from torchslim.data import _Collate, _Images, load_split  # noqa: PLC2701 - same package
    from torchslim.measure.report import measure, to_table

    model, cfg, shape = _model_data(a.model, a.data_dir, a.import_model)
    x, y = load_split(cfg, "test")
    loader = DataLoader(_Images(x, y), 256, collate_fn=_Collate(cfg.mean, cfg.std, False))
    shape = shape or tuple(next(iter(loader))[0].shape[1:])  # not recorded: the data's own
    res = {
        "model": model.torchslim.header["arch"]["name"] if model.torchslim.header.get("arch") else None,
        "file": a.model,
        **measure(model, shape, loader=loader, path=a.model, latency=not a.no_latency, engine=a.engine),
    }
    print(json.dumps(res) if a.json else to_table([res]))
    return 0


def _cmd_tune(a: argparse.Namespace) -> int:
    from torchslim.export.slim import retune

    choices = retune(a.model, a.output, model=_fresh_model(a.model, a.import_model))
    print(json.dumps(choices) if choices else "no layer of this file has a kernel choice")
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from torchslim.measure.counts import layer_table
    from torchslim.measure.report import to_table

    model, _, shape = _model_data(a.model, None, a.import_model)
    shape = _shape_or_refuse(a.model, shape)
    header = model.torchslim.header
    state = model.state_dict()
    ms = {}
    if a.latency:
        from torchslim.measure.latency import layer_latency

        ms = {k: round(v, 4) for k, v in layer_latency(model, shape, a.batch).items()}
    rows = []
    for r in layer_table(model, shape):
        nbytes = sum(t.numel() * t.element_size() for k, t in state.items() if k.rsplit(".", 1)[0] == r["name"])
        if r["params"] or r["macs"] or nbytes or r["name"] in ms:
            row = {**r, "out_shape": "x".join(map(str, r["out_shape"] or [])), "bytes": nbytes}
            rows.append({**row, f"ms_b{a.batch}": ms.get(r["name"], "")} if a.latency else row)
    print(
        f"{a.model}: {header['arch']['name'] if header.get('arch') else 'custom'} "
        f"{Path(a.model).stat().st_size:,} bytes"
    )
    cols = ["name", "type", "out_shape", "params", "nonzeros", "bytes", "macs"]
    print(to_table(rows, cols + ([f"ms_b{a.batch}"] if a.latency else [])))
    if header.get("entropy"):
        print("\nHuffman-coded streams (bytes as stored; bits per index or gap):")
        print(
            to_table(
                [{"stream": k, **v} for k, v in header["entropy"].items()],
                ["stream", "kind", "n", "raw_bytes", "coded_bytes", "bits_per_symbol"],
            )
        )
    return 0


def _cmd_export(a: argparse.Namespace) -> int:
    from torchslim.core.inputs import from_shape, is_multi
    from torchslim.export.onnx import export_onnx

    model, _, shape = _model_data(a.model, None, a.import_model)
    shape = _shape_or_refuse(a.model, shape)
    out = export_onnx(model, from_shape(shape), a.output, int8_initializers=not a.float_weights)
    shapes = shape if is_multi(shape) else (shape,)
    names = ["input"] if len(shapes) == 1 else [f"input{i}" for i in range(len(shapes))]
    described = ", ".join(f"'{n}' of shape (N, {', '.join(map(str, s))})" for n, s in zip(names, shapes))
    print(f"wrote {out} ({out.stat().st_size:,} bytes; opset 17, dynamic batch, inputs {described})")
    return 0


def _cmd_sensitivity(a: argparse.Namespace) -> int:
    import yaml

    from torchslim.data import make_loaders
    from torchslim.export.slim import load
    from torchslim.measure.report import to_table, write_report
    from torchslim.prune.sensitivity import auto_overrides, plot_sensitivity, sensitivity
    from torchslim.recipe import parse_recipe, run_recipe

    recipe = parse_recipe(a.recipe, a.data_dir)
    out = Path(a.out or Path("runs") / recipe.name) / "sensitivity"
    if recipe.model.get("from"):
        model = load(recipe.model["from"])
    else:  # train (or reuse) the recipe's baseline
        run_recipe({**recipe.raw, "stages": []}, out / "baseline", data_dir=a.data_dir, latency=False)
        model = load(out / "baseline" / "model.slim")
    loaders = make_loaders(recipe.data, seed=recipe.train.seed)
    if loaders.val is None:
        raise ValueError("sensitivity evaluates on the validation split; set data.val_size > 0")
    ratios = [float(r) for r in a.ratios.split(",")]
    rows = sensitivity(model, loaders.val, a.method, ratios)
    write_report(rows, out / "sensitivity", title=f"Sensitivity ({a.method}, validation split)")
    plot_sensitivity(rows, out / "sensitivity.png")
    print(to_table(rows))
    print(f"\nper-layer ratios for a drop <= {a.max_drop} pp (paste as the stage's overrides):")
    print(yaml.safe_dump({"overrides": auto_overrides(rows, a.max_drop, a.method)}, sort_keys=False))
    print(f"wrote {out / 'sensitivity.json'}, {out / 'sensitivity.md'}, {out / 'sensitivity.png'}")
    return 0


def _cmd_auto(a: argparse.Namespace) -> int:
    import json

    from torchslim.measure.report import to_table
    from torchslim.search import AutoConfig, auto

    if bool(a.model) == bool(a.slim):
        raise ValueError("give the trained model: a .slim file (--from FILE) or your own (--model PKG.MODULE:FACTORY)")
    data = {k: v for k, v in (("name", a.data), ("dir", a.data_dir)) if v}  # unset: DataConfig's defaults
    settings = {"max_drop": a.max_drop, "objective": a.objective, "engine": a.engine, "seed": a.seed}
    settings.update({k: getattr(a, k) for k in ("points", "epochs", "round_to") if getattr(a, k) is not None})
    cfg = AutoConfig.quick(**settings) if a.quick else AutoConfig(**settings)
    if a.model:
        from torchslim.imported import build_imported, load_weights

        kwargs = json.loads(a.kwargs)
        model = build_imported(a.model, kwargs)
        if a.weights:
            model = load_weights(model, a.weights)
        summary = auto(model, data, a.out, cfg, model_import=a.model, model_kwargs=kwargs, restart=a.restart)
    else:
        summary = auto(a.slim, data, a.out, cfg, restart=a.restart)
    cols = ["point", "top1", "drop", "bytes", "bytes_vs_float", "macs", "latency_b256_ms", "latency_b256_ms_vs_float"]
    print(to_table([{"point": "float", **summary["baseline"]}, *summary["points"]], cols))
    verdict = "within" if summary["met"] else "NOT within (the most accurate point is given)"
    print(f"\nbest: {summary['best']} ({verdict} {cfg.max_drop} pp): {Path(a.out) / 'best.slim'}")
    print(f"wrote {Path(a.out) / 'front.json'}, front.md, front.png and points/*.slim, points/*.yaml")
    return 0


def _cmd_list(a: argparse.Namespace) -> int:
    if a.what == "models":
        from torchslim.models import list_models

        print("\n".join(list_models()))
    else:
        from torchslim.core.registry import list_methods

        print("\n".join(list_methods()))
    return 0


def command_lines() -> list[str]:
    """One line per command, from the parser itself: its usage and its help (the command list in
    docs/usage.md is this, checked by tests/test_docs.py)."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in sub._choices_actions}
    lines = []
    for name, cmd in sub.choices.items():
        usage = " ".join(cmd.format_usage().removeprefix("usage: ").replace(" [-h]", "").split())
        lines.append(f"{usage}   # {helps[name]}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchslim", description="Compress CNNs with measured, real gains.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a recipe (train / load, compress, report); resumes after a crash")
    r.add_argument("recipe")
    r.add_argument("--out", help="run folder (default runs/<recipe name>)")
    r.add_argument("--data-dir", help="folder with the data set files")
    r.add_argument("--restart", action="store_true", help="delete the run folder and start over")
    r.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    r.set_defaults(fn=_cmd_run)
    d = sub.add_parser(
        "distill",
        help="train a registry student from a teacher .slim file (Hinton KD); the report compares student and teacher",
    )
    d.add_argument("--teacher", required=True, help="teacher .slim file")
    d.add_argument(
        "--student",
        required=True,
        help="registry model name (torchslim list models) or your own model as package.module:factory",
    )
    d.add_argument("--kwargs", default="{}", help="student constructor arguments as JSON, e.g. '{\"width_mult\": 0.5}'")
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--optimizer", default="adam", choices=["adam", "sgd"])
    d.add_argument("--lr", type=float, default=0.001)
    d.add_argument("--T", type=float, default=4.0, help="temperature")
    d.add_argument("--alpha", type=float, default=0.5, help="weight of the soft loss in [0, 1]")
    d.add_argument("--loss", default="kd", choices=["kd", "mse"])
    d.add_argument("--augment", action="store_true")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--name", help="run name (default distill_<student>)")
    d.add_argument("--out")
    d.add_argument("--data-dir")
    d.add_argument("--restart", action="store_true")
    d.add_argument("--no-latency", action="store_true")
    d.set_defaults(fn=_cmd_distill)
    e = sub.add_parser("eval", help="measure a .slim file: accuracy, bytes, params, MACs, latency")
    e.add_argument("model")
    e.add_argument("--data-dir")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--no-latency", action="store_true")
    e.add_argument(
        "--engine",
        default="eager",
        choices=["eager", "pytorch", "compile", "onnxruntime", "auto"],
        help="what runs the model for accuracy and latency; auto times each engine on the model and "
        "uses the fastest (default: eager, torchslim's own runtime)",
    )
    e.set_defaults(fn=_cmd_eval)
    t = sub.add_parser(
        "tune",
        help="re-time each layer's kernel choice (sparse/dense, lookup table/dense) on this machine and "
        "rewrite the file with the faster kernels",
    )
    t.add_argument("model")
    t.add_argument("-o", "--output", help="write here instead of in place")
    t.set_defaults(fn=_cmd_tune)
    i = sub.add_parser("inspect", help="per-layer table of a .slim file")
    i.add_argument("model")
    i.add_argument(
        "--latency", action="store_true", help="time each layer alone as the eager engine runs it (its real input)"
    )
    i.add_argument("--batch", type=int, default=256, help="batch size for --latency (default 256)")
    i.set_defaults(fn=_cmd_inspect)
    for cmd in (e, i, t):
        cmd.add_argument(
            "--model",
            dest="import_model",
            metavar="PKG.MODULE:FACTORY",
            help="your own model's factory, for files of models outside the registry",
        )
    x = sub.add_parser("export", help="write a .slim file as ONNX (int8 as a QDQ graph, packed layers expanded)")
    x.add_argument("model")
    x.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    x.add_argument("--float-weights", action="store_true", help="keep int8 weights as float initializers")
    x.add_argument(
        "--model",
        dest="import_model",
        metavar="PKG.MODULE:FACTORY",
        help="your own model's factory, for files of models outside the registry",
    )
    x.set_defaults(fn=_cmd_export)
    se = sub.add_parser("sensitivity", help="prune each layer alone at several ratios; table, plot, ratios")
    se.add_argument("recipe")
    se.add_argument("--method", default="prune.magnitude", choices=["prune.magnitude", "prune.filters"])
    se.add_argument("--ratios", default="0.1,0.3,0.5,0.7,0.9")
    se.add_argument("--max-drop", type=float, default=1.0, help="accuracy drop allowed per layer (pp)")
    se.add_argument("--out")
    se.add_argument("--data-dir")
    se.set_defaults(fn=_cmd_sensitivity)
    au = sub.add_parser(
        "auto",
        help="search pruning, low-rank, k-means and int8 per layer for a top-1 budget; measured Pareto front",
    )
    au.add_argument("--from", dest="slim", metavar="FILE.slim", help="the trained model as a .slim file")
    au.add_argument("--model", metavar="PKG.MODULE:FACTORY", help="or your own model's factory (with --weights)")
    au.add_argument("--kwargs", default="{}", help="factory arguments as JSON")
    au.add_argument("--weights", help="weights of your model (.slim, .safetensors or a weights-only .pt)")
    au.add_argument("--max-drop", type=float, default=0.5, help="top-1 points the model may lose (default 0.5)")
    au.add_argument("--objective", default="latency", choices=["latency", "bytes", "macs"])
    au.add_argument("--engine", default="eager", choices=["eager", "pytorch"])
    au.add_argument("--quick", action="store_true", help="fewer forms, short fine-tunes (vgg_small: 6 min)")
    au.add_argument("--points", type=int, help="models fine-tuned and measured along the search path")
    au.add_argument("--epochs", type=int, help="fine-tune epochs per point")
    au.add_argument("--round-to", type=int, help="channel / rank multiple (default 8)")
    au.add_argument("--seed", type=int, default=0)
    au.add_argument("--data", help="data set name (default: torchslim.data.DataConfig's)")
    au.add_argument("--data-dir")
    au.add_argument("--out", required=True, help="run folder (resumes when rerun)")
    au.add_argument("--restart", action="store_true")
    au.set_defaults(fn=_cmd_auto)
    ls = sub.add_parser("list", help="list registered models or methods")
    ls.add_argument("what", choices=["models", "methods"])
    ls.set_defaults(fn=_cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    from torchslim.measure.latency import keep_freed_memory

    keep_freed_memory()  # before the first large tensor: no page faults per forward (see its docstring)
    args = build_parser().parse_args(argv)
    from torchslim.export.slim import SlimFileError
    from torchslim.recipe import RecipeError

    try:
        return args.fn(args)
    except (RecipeError, SlimFileError, DataError) as e:
        print(f"torchslim: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # config validation: messages name the field and the fix
        print(f"torchslim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("torchslim: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
