"""Low-rank benchmark: SVD, Tucker-2, CP and spatial factorization against the float
baseline and TensorLy-Torch, in one run.

Sections (``--only`` picks some):
  svd     lenet300_100 (whole model to 30 % of its FC parameters, budget mode) and
          vgg_small's classifier (rank 64): FC parameters, accuracy after fine-tuning.
  conv    vgg_small (Tucker-2, CP, spatial) and resnet20 (Tucker-2) to 50 % of the
          model's MACs (budget mode, ``prefer=size``), fine-tuned; batch-256 latency.
  auto    vgg_small with ``lowrank.auto`` (per layer dense, Tucker-2 or spatial, whichever makes the
          whole model fastest at batch 256 in the eager runtime; ranks from the 50 % budget)
          against the every-layer Tucker-2 artifact, fine-tuned like the conv section.
  cp      vgg_small CP to 50 % of MACs fine-tuned as Lebedev et al. (2015) do: the whole
          network at a 10x lower learning rate than the other factorizations (CP factors
          diverge at lr 0.01: the conv section's row).
  ranks   rank-selection modes at equal MACs on vgg_small (Tucker-2): VBMF, the budget
          allocated by spectrum (one energy level) and uniformly (one rank fraction),
          accuracy before and after one fine-tuning epoch.
  peer    tltorch FactorizedConv (Tucker, factorized forward) at the ranks of our
          vgg_small Tucker-2 model, before fine-tuning: accuracy and latency.
  ort     vgg_small Tucker-2 for ONNX Runtime: ranks rounded (none / 8 / 16) timed in ONNX
          Runtime against the float model, the fastest fine-tuned like the conv section into
          vgg_small_tucker_ort.slim (results/lowrank_ort.{json,md}).

Writes benchmarks/results/lowrank.{json,md} and the headline models
benchmarks/artifacts/lenet300_100_svd.slim, vgg_small_tucker.slim, vgg_small_cp.slim and
vgg_small_lowrank_auto.slim. Starts from the
float baselines in benchmarks/artifacts/; fine-tuning resumes from benchmarks/cache/.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn as nn

import torchslim as ts
from torchslim.core.registry import get_method
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import count_macs, evaluate, latency_ms, measure, write_report
from torchslim.train import TrainConfig, fit

from _common import ORT_COLUMNS, compare, ort_rounding_rows, parse, parser, run_sections

ROOT = Path(__file__).resolve().parent
ART, CACHE, RES = ROOT / "artifacts", ROOT / "cache", ROOT / "results"
SHAPE = (1, 28, 28)
COLUMNS = [
    "section",
    "model",
    "method",
    "setting",
    "top1_before_ft",
    "top1",
    "delta_pp",
    "fc_params",
    "fc_params_ratio",
    "params",
    "bytes",
    "bytes_ratio",
    "macs",
    "macs_ratio",
    "latency_b1_ms",
    "latency_b256_ms",
    "speedup_b256",
    "threads",
]
ADAM_FT = {"optimizer": "adam", "lr": 0.0005, "weight_decay": 0.0, "schedule": "cosine", "seed": 0}
SGD_FT = {"optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0005, "schedule": "cosine", "seed": 0}
FIRST = ("0.0", "conv1")  # first convs (one input channel) stay dense


def _fc_params(model: nn.Module) -> int:
    return sum(
        m.weight.numel() + (m.bias.numel() if m.bias is not None else 0)
        for m in model.modules()
        if isinstance(m, nn.Linear)
    )


def _row(model, section, name, method, setting, test, base, path=None, before=None) -> dict:
    r = {
        "section": section,
        "model": name,
        "method": method,
        "setting": setting,
        **measure(model, SHAPE, loader=test, path=path, min_run_time=1.0),
    }
    r["fc_params"] = _fc_params(model)
    if base is not None:
        r["fc_params_ratio"] = round(base["fc_params"] / r["fc_params"], 2)
    r["top1_before_ft"] = before
    compare(r, base)
    print(json.dumps({k: r.get(k) for k in COLUMNS}), flush=True)
    return r


class _Run:
    """Float baselines (measured once per model) and the compress -> fine-tune -> save step."""

    def __init__(self, data_dir):
        self.loaders = {aug: make_loaders(DataConfig(dir=data_dir, augment=aug), seed=0) for aug in (False, True)}
        self.test = self.loaders[False].test
        self.bases: dict[str, dict] = {}

    def base(self, name: str, section: str) -> dict:
        """The float baseline's row (measured once per model in this run), labelled with ``section``."""
        if name not in self.bases:
            self.bases[name] = _row(
                ts.load(ART / f"{name}.slim"), section, name, "float", "baseline", self.test, None, ART / f"{name}.slim"
            )
        return {**self.bases[name], "section": section}

    def compressed(self, name: str, method: str, fields: dict) -> nn.Module:
        model = ts.load(ART / f"{name}.slim")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ts.convert_(ts.compress_(model, get_method(method).config_cls(**fields)))

    def tuned(self, name: str, method: str, fields: dict, tag: str, ft: dict, augment: bool):
        """(model fine-tuned, accuracy before fine-tuning, path of its .slim file)."""
        model = self.compressed(name, method, fields)
        before = evaluate(model, self.test)["top1"]
        fit(
            model,
            self.loaders[augment].train,
            TrainConfig(**ft),
            val_loader=self.loaders[augment].val,
            checkpoint_dir=CACHE / tag,
            desc=tag,
        )
        path = CACHE / tag / "model.slim"
        ts.save(
            model,
            path,
            recipe={"model": {"from": f"{name}.slim"}, "stages": [{"method": method, **fields, "finetune": ft}]},
        )
        return ts.load(path), before, path


def svd(run: _Run) -> list[dict]:
    rows = []
    for name, fields, ft, artifact in [
        (
            "lenet300_100",
            {"selection": "budget", "target_macs": 0.3, "prefer": "size", "exclude": ("5",)},
            {"epochs": 4, **ADAM_FT},
            "lenet300_100_svd",
        ),
        (
            "vgg_small",
            {"selection": "fixed", "rank": 64, "prefer": "size", "layers": ("2.0",)},
            {"epochs": 2, **SGD_FT},
            None,
        ),
    ]:
        base = run.base(name, "svd")
        rows.append(base)
        tag = f"lowrank_svd_{name}"
        model, before, path = run.tuned(name, "lowrank.svd", fields, tag, ft, augment=name == "vgg_small")
        setting = "30 % of MACs (budget)" if "target_macs" in fields else f"classifier rank {fields['rank']}"
        rows.append(
            _row(model, "svd", name, "lowrank.svd", f"{setting}, {ft['epochs']} ep", run.test, base, path, before)
        )
        if artifact:
            shutil.copyfile(path, ART / f"{artifact}.slim")
    return rows


CONV = [  # (model, method, fine-tune epochs, learning rate, artifact)
    ("vgg_small", "lowrank.tucker", 2, 0.01, "vgg_small_tucker"),
    ("vgg_small", "lowrank.cp", 2, 0.01, None),
    ("vgg_small", "lowrank.spatial", 2, 0.01, None),
    ("resnet20", "lowrank.tucker", 2, 0.01, None),
]


def conv(run: _Run) -> list[dict]:
    rows = []
    for name, method, epochs, lr, artifact in CONV:
        base = run.base(name, "conv")
        if not any(r["model"] == name for r in rows):
            rows.append(base)
        fields = {"selection": "budget", "target_macs": 0.5, "prefer": "size", "exclude": FIRST}
        tag = f"lowrank_{method.split('.')[1]}_{name}" + ("" if lr == SGD_FT["lr"] else f"_lr{lr:g}")
        model, before, path = run.tuned(name, method, fields, tag, {**SGD_FT, "epochs": epochs, "lr": lr}, augment=True)
        rows.append(
            _row(
                model,
                "conv",
                name,
                method,
                f"50 % of MACs (budget), {epochs} ep, lr {lr:g}",
                run.test,
                base,
                path,
                before,
            )
        )
        if artifact:
            shutil.copyfile(path, ART / f"{artifact}.slim")
    return rows


CP_FT = {**SGD_FT, "epochs": 2, "lr": 0.001}


def cp(run: _Run) -> list[dict]:
    name = "vgg_small"
    base = run.base(name, "cp")
    fields = {"selection": "budget", "target_macs": 0.5, "prefer": "size", "exclude": FIRST}
    model, before, path = run.tuned(name, "lowrank.cp", fields, "lowrank_cp_vgg_small_lebedev", CP_FT, augment=True)
    setting = f"50 % of MACs (budget), {CP_FT['epochs']} ep, lr {CP_FT['lr']:g} (Lebedev et al.)"
    row = _row(model, "cp", name, "lowrank.cp", setting, run.test, base, path, before)
    shutil.copyfile(path, ART / "vgg_small_cp.slim")
    return [base, row]


def auto(run: _Run) -> list[dict]:
    """lowrank.auto against every-layer Tucker-2 (the conv section's artifact) in the same run."""
    name = "vgg_small"
    base = run.base(name, "auto")
    tucker = ART / "vgg_small_tucker.slim"
    setting = "50 % of MACs (budget), every layer, 2 ep (conv section's artifact)"
    rows = [base, _row(ts.load(tucker), "auto", name, "lowrank.tucker", setting, run.test, base, tucker)]
    fields = {"selection": "budget", "target_macs": 0.5, "batches": [256], "exclude": FIRST}
    ft = {**SGD_FT, "epochs": 2}
    model, before, path = run.tuned(name, "lowrank.auto", fields, "lowrank_auto_vgg_small", ft, augment=True)
    setting = "dense / Tucker-2 / spatial per layer by whole-model latency at batch 256, 50 % budget ranks, 2 ep"
    rows.append(_row(model, "auto", name, "lowrank.auto", setting, run.test, base, path, before))
    shutil.copyfile(path, ART / "vgg_small_lowrank_auto.slim")
    return rows


def ranks(run: _Run) -> list[dict]:
    name, rows = "vgg_small", []
    base = run.base(name, "ranks")
    rows.append(base)
    vbmf = {"selection": "vbmf", "prefer": "size", "exclude": FIRST}
    target = count_macs(run.compressed(name, "lowrank.tucker", vbmf), SHAPE) / base["macs"]
    for label, fields in [
        ("VBMF", vbmf),
        (
            f"budget {target:.0%}, spectrum",
            {
                "selection": "budget",
                "target_macs": round(target, 4),
                "allocate": "spectrum",
                "prefer": "size",
                "exclude": FIRST,
            },
        ),
        (
            f"budget {target:.0%}, uniform",
            {
                "selection": "budget",
                "target_macs": round(target, 4),
                "allocate": "uniform",
                "prefer": "size",
                "exclude": FIRST,
            },
        ),
    ]:
        tag = f"lowrank_ranks_{label.split(',')[-1].strip().split()[0].lower()}"
        model, before, path = run.tuned(name, "lowrank.tucker", fields, tag, {"epochs": 1, **SGD_FT}, augment=True)
        rows.append(_row(model, "ranks", name, "lowrank.tucker", f"{label}, 1 ep", run.test, base, path, before))
    return rows


def peer(run: _Run) -> list[dict]:
    """tltorch at our ranks (read from the Tucker-2 model's decision log), before fine-tuning."""
    import tltorch

    name, rows = "vgg_small", []
    base = run.base(name, "peer")
    rows.append(base)
    ours = run.compressed(
        name, "lowrank.tucker", {"selection": "budget", "target_macs": 0.5, "prefer": "size", "exclude": FIRST}
    )
    rows.append(_row(ours, "peer", name, "torchslim lowrank.tucker", "50 % of MACs, no fine-tuning", run.test, base))
    theirs = ts.load(ART / f"{name}.slim")
    for e in ours.torchslim.log:
        if e.get("decision") == "factorized":
            conv_layer = ts.core.surgery.get_module(theirs, e["layer"])
            r_out, r_in = e["ranks"]
            kh, kw = conv_layer.kernel_size
            ts.core.surgery.set_module(
                theirs,
                e["layer"],
                tltorch.FactorizedConv.from_conv(
                    conv_layer, rank=(r_out, r_in, kh, kw), factorization="tucker", implementation="factorized"
                ),
            )
    theirs.eval()
    r = {
        "section": "peer",
        "model": name,
        "method": "tltorch FactorizedConv",
        "setting": "same Tucker ranks (same MACs), no fine-tuning",
        **evaluate(theirs, run.test),
        "params": sum(p.numel() for p in theirs.parameters()),
        "macs": rows[-1]["macs"],
        "latency_b1_ms": latency_ms(theirs, SHAPE, 1, min_run_time=1.0),
        "latency_b256_ms": latency_ms(theirs, SHAPE, 256, min_run_time=1.0),
        "threads": torch.get_num_threads(),
    }
    r["speedup_b256"] = round(base["latency_b256_ms"] / r["latency_b256_ms"], 2)  # no .slim form: no file bytes
    print(json.dumps(r), flush=True)
    rows.append(r)
    return rows


def ort(run: _Run) -> list[dict]:
    """Tucker-2 that stays fast in ONNX Runtime: each rank rounding at 50 % of vgg_small's MACs
    timed in ORT against the float model (``_common.ort_rounding_rows``), the fastest fine-tuned
    as the conv section's artifact was."""
    name, epochs = "vgg_small", 2
    fields = {"selection": "budget", "target_macs": 0.5, "prefer": "size", "exclude": FIRST}
    rows, best = ort_rounding_rows(
        name,
        ts.load(ART / f"{name}.slim"),
        lambda r: run.compressed(name, "lowrank.tucker", {**fields, "round_to": r}),
        CACHE / "ort_rounding_tucker",
    )
    ft = {**SGD_FT, "epochs": epochs, "lr": 0.01}
    _, _, path = run.tuned(name, "lowrank.tucker", {**fields, "round_to": best}, f"lowrank_tucker_ort_{best}", ft, True)
    shutil.copyfile(path, ART / "vgg_small_tucker_ort.slim")
    return rows


SECTIONS = ("svd", "conv", "cp", "auto", "ranks", "peer")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--only", nargs="*", default=[*SECTIONS, "ort"])
    a = parse(ap)
    run = _Run(a.data_dir)
    cache = CACHE / "lowrank_sections.json"
    if not cache.exists():  # sections not rerun keep their committed rows
        committed = json.loads((RES / "lowrank.json").read_text())
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({k: [r for r in committed if r["section"] == k] for k in SECTIONS}))
    sections = run_sections(
        cache,
        a.only,
        {
            "svd": lambda: svd(run),
            "conv": lambda: conv(run),
            "cp": lambda: cp(run),
            "auto": lambda: auto(run),
            "ranks": lambda: ranks(run),
            "peer": lambda: peer(run),
            "ort": lambda: ort(run),
        },
    )
    if "ort" in sections:
        title = "Tucker-2 for ONNX Runtime: rank rounding timed in ORT against the float model"
        write_report(sections["ort"], RES / "lowrank_ort", ORT_COLUMNS, title=title)
    write_report(
        [r for k in SECTIONS for r in sections.get(k, [])],
        RES / "lowrank",
        COLUMNS,
        title="Low-rank factorization on Fashion-MNIST (test split), float baseline and TensorLy-Torch in the same run",
    )


if __name__ == "__main__":
    main()
