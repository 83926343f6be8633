"""Re-measure every committed artifact (benchmarks/artifacts/*.slim) and write its numbers into the
results rows it backs, so that the results files (and the README/docs tables copied from them)
are exactly what ``torchslim eval FILE --json`` gives for the committed files.

Per artifact it measures top-1/top-5/loss on the Fashion-MNIST test split and bytes, params,
nonzeros, MACs and effective MACs of the file (latency is left as the benchmark measured it: it
depends on the machine and on what else runs). Ratios derived from those numbers (delta_pp,
bytes_ratio, macs_ratio, ratio) are recomputed against the same section's float row. Every
artifact and its numbers also go to benchmarks/results/artifacts.{json,md}.

    python benchmarks/update_results.py            # re-measure and rewrite
    python benchmarks/update_results.py --check    # exit 1 if a results row differs from its file
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _common import FLOAT, float_base, parse, parser

ROOT = Path(__file__).resolve().parent
ART, RES = ROOT / "artifacts", ROOT / "results"
MEASURED = ("top1", "top5", "loss", "bytes", "params", "nonzeros", "macs", "effective_macs")
CHECKED = ("top1", "bytes", "params", "macs")  # what --check compares (loss: float summation order)

# artifact -> [(results file, fields a row must match)]: the rows the file's numbers back
BACKS: dict[str, list[tuple[str, dict]]] = {
    "lenet5.slim": [
        ("baselines", {"model": "lenet5"}),
        ("pruning", {"section": "magnitude", "model": "lenet5", "method": "float"}),
        ("deep_compression", {"model": "lenet5", "stage": "float32"}),
    ],
    "lenet300_100.slim": [
        ("baselines", {"model": "lenet300_100"}),
        ("pruning", {"section": "magnitude", "model": "lenet300_100", "method": "float"}),
        ("deep_compression", {"model": "lenet300_100", "stage": "float32"}),
        ("lowrank", {"section": "svd", "model": "lenet300_100", "method": "float"}),
        ("reproduce", {"section": "binaryconnect", "method": "float"}),
    ],
    "vgg_small.slim": [
        ("baselines", {"model": "vgg_small"}),
        ("pruning", {"section": "filters", "model": "vgg_small", "method": "float"}),
        ("quantization", {"section": "baseline"}),
        ("lowrank", {"model": "vgg_small", "method": "float"}),
        ("binary", {"model": "vgg_small", "method": "float32"}),
        ("reproduce", {"section": "slimming", "method": "float"}),
        ("reproduce", {"section": "fitnets", "method": "float"}),
    ],
    "resnet20.slim": [
        ("baselines", {"model": "resnet20"}),
        ("pruning", {"section": "filters", "model": "resnet20", "method": "float"}),
        ("lowrank", {"section": "conv", "model": "resnet20", "method": "float"}),
        ("binary", {"model": "resnet20", "method": "float32"}),
    ],
    "lenet5_magnitude.slim": [("pruning", {"model": "lenet5", "method": "torchslim prune.magnitude"})],
    "lenet300_100_magnitude.slim": [("pruning", {"model": "lenet300_100", "method": "torchslim prune.magnitude"})],
    "lenet5_deep_compression.slim": [
        ("deep_compression", {"method": "deep_compression", "model": "lenet5", "stage": "+ Huffman"})
    ],
    "lenet300_100_deep_compression.slim": [
        ("deep_compression", {"method": "deep_compression", "model": "lenet300_100", "stage": "+ Huffman"})
    ],
    "lenet5_sparse_vd.slim": [("deep_compression", {"method": "sparse_vd", "model": "lenet5", "stage": "+ Huffman"})],
    "lenet300_100_sparse_vd.slim": [
        ("deep_compression", {"method": "sparse_vd", "model": "lenet300_100", "stage": "+ Huffman"})
    ],
    "vgg_small_filters_ort.slim": [("deploy", {"artifact": "vgg_small_filters_ort.slim"})],
    "vgg_small_tucker_ort.slim": [("deploy", {"artifact": "vgg_small_tucker_ort.slim"})],
    "lenet300_100_svd.slim": [("lowrank", {"section": "svd", "model": "lenet300_100", "method": "lowrank.svd"})],
    "vgg_small_filters.slim": [
        ("pruning", {"model": "vgg_small", "method": "torchslim prune.filters", "setting": "L1, <= 50% MACs, 3 ep"})
    ],
    "resnet20_filters.slim": [("pruning", {"model": "resnet20", "method": "torchslim prune.filters"})],
    "vgg_small_tucker.slim": [("lowrank", {"section": "conv", "model": "vgg_small", "method": "lowrank.tucker"})],
    "vgg_small_cp.slim": [("lowrank", {"section": "cp", "model": "vgg_small", "method": "lowrank.cp"})],
    "vgg_small_lowrank_auto.slim": [("lowrank", {"section": "auto", "model": "vgg_small", "method": "lowrank.auto"})],
    "vgg_small_int8.slim": [
        ("quantization", {"method": "quant.uniform", "setting": "int8 weights + activations, PTQ (x86 int8 kernels)"})
    ],
    "vgg_small_kmeans4.slim": [
        ("quantization", {"method": "quant.kmeans", "setting": "4 bits, linear init, codebook fine-tuning 1 ep"})
    ],
    "vgg_small_bwn.slim": [("binary", {"model": "vgg_small", "method": "binary.bwn"})],
    "vgg_small_xnor.slim": [("binary", {"model": "vgg_small", "method": "binary.xnor"})],
    "vgg_small_bnn.slim": [
        (
            "binary",
            {
                "model": "vgg_small",
                "method": "binary.bnn",
                "setting": "8 ep Adam from float; first/last float; shortcut; threshold; learned_scale; KD T=4 a=0.9",
            },
        )
    ],
    "vgg_small_bnn_plain.slim": [
        (
            "binary",
            {
                "model": "vgg_small",
                "method": "binary.bnn",
                "setting": "8 ep Adam from float; first/last float; threshold; learned_scale; KD T=4 a=0.9",
            },
        )
    ],
    "resnet20_xnor.slim": [("binary", {"model": "resnet20", "method": "binary.xnor"})],
    "vgg_small_slimming.slim": [("reproduce", {"section": "slimming", "method": "prune.slimming"})],
    "lenet300_100_binaryconnect.slim": [("reproduce", {"section": "binaryconnect", "method": "binary.connect"})],
    # distillation artifacts (seed 0 of their settings): numbers in artifacts.json only
    "mobilenetv2_w0.5_kd.slim": [],
    "mobilenetv2_w0.5_alone.slim": [],
    "vgg_small_w12_kd.slim": [],
    "vgg_small_w12_alone.slim": [],
    "vgg_small_w14_kd.slim": [],
    "vgg_small_w14_alone.slim": [],
}
# torchslim auto: the float model and the single-family artifacts are measured again beside each
# search's front points (benchmarks/auto.py), whose files are named after the search and point
for _name in ("vgg_small", "vgg_small_int8", "vgg_small_kmeans4", "vgg_small_filters", "vgg_small_tucker"):
    BACKS[f"{_name}.slim"].append(("auto", {"name": _name}))
BACKS.update({p.name: [("auto", {"name": p.stem})] for p in sorted(ART.glob("vgg_small_auto_*.slim"))})
for _name in ("resnet20", "resnet20_filters"):
    BACKS[f"{_name}.slim"].append(("auto_resnet20", {"name": _name}))
BACKS.update({p.name: [("auto_resnet20", {"name": p.stem})] for p in sorted(ART.glob("resnet20_auto_*.slim"))})


def measure_artifact(name: str, loader) -> dict:
    """What ``torchslim eval FILE --json`` reports for the file, without latency."""
    import torchslim as ts
    from torchslim.measure import measure

    path = ART / name
    row = measure(ts.load(path), (1, 28, 28), loader=loader, path=path, latency=False)
    return {k: row[k] for k in MEASURED}


def differences(row: dict, measured: dict) -> list[tuple[str, object, object]]:
    """(key, results value, file value) for every :data:`CHECKED` number where the row differs."""
    return [(k, row.get(k), measured[k]) for k in CHECKED if row.get(k) != measured[k]]


def _matches(row: dict, want: dict) -> bool:
    return all(row.get(k) == v for k, v in want.items())


def _rederive(rows: list[dict]) -> None:
    """Ratios against the float row of the same section and model (as the benchmark scripts compute them)."""
    for row in rows:
        if row.get("method") in FLOAT or row.get("stage") in FLOAT:
            continue
        base = float_base(rows, row)
        if base is None:
            continue
        if "delta_pp" in row:
            row["delta_pp"] = round(row["top1"] - base["top1"], 2)
        if "bytes_ratio" in row:
            row["bytes_ratio"] = round(base["bytes"] / row["bytes"], 2)
        if "macs_ratio" in row:
            row["macs_ratio"] = round(row["macs"] / base["macs"], 3)
        if "ratio" in row:
            row["ratio"] = round(base["bytes"] / row["bytes"], 1)


def _md_tables(text: str) -> list[tuple[int, int, list[str]]]:
    """(first line, last line, columns) of each markdown table in ``text``."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            j = i + 2
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.append((i, j, [c.strip() for c in lines[i].strip("|").split("|")]))
            i = j
        else:
            i += 1
    return out


def rewrite_md(name: str, rows: list[dict]) -> None:
    """Re-render the single table of results/<name>.md from its rows, same title and columns."""
    from torchslim.measure import to_markdown

    md = RES / f"{name}.md"
    text = md.read_text()
    tables = _md_tables(text)
    if len(tables) != 1:
        raise SystemExit(f"{md}: expected one table, found {len(tables)}")
    first, last, cols = tables[0]
    lines = text.splitlines()
    body = to_markdown(rows, cols).strip().splitlines()
    md.write_text("\n".join(lines[:first] + body + lines[last:]) + "\n")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    a = parse(ap)
    from torchslim.data import DataConfig, make_loaders
    from torchslim.measure import write_report

    loader = make_loaders(DataConfig(dir=a.data_dir)).test
    results = {f: json.loads((RES / f"{f}.json").read_text()) for f in {f for v in BACKS.values() for f, _ in v}}
    on_disk = {p.name for p in ART.glob("*.slim")}
    if on_disk != set(BACKS):
        raise SystemExit(f"artifacts without a BACKS entry or missing files: {sorted(on_disk ^ set(BACKS))}")
    measured, diffs = {}, []
    for name, backs in sorted(BACKS.items()):
        m = measured[name] = {"artifact": name, **measure_artifact(name, loader)}
        print(m, flush=True)
        for file, want in backs:
            hit = [r for r in results[file] if _matches(r, want)]
            if not hit:
                raise SystemExit(f"{name}: no row of results/{file}.json matches {want}")
            for r in hit:
                diffs += [(name, file, *d) for d in differences(r, m)]
                r.update({k: m[k] for k in MEASURED}, artifact=name)
    if a.check:
        for name, file, key, old, new in diffs:
            print(f"differs: {name} {file} {key} results={old!r} file={new!r}")
        sys.exit(1 if diffs else 0)
    for file, rows in results.items():
        _rederive(rows)
        (RES / f"{file}.json").write_text(json.dumps(rows, indent=1) + "\n")
        rewrite_md(file, rows)
    write_report(
        list(measured.values()),
        RES / "artifacts",
        ["artifact", *MEASURED],
        title="Committed artifacts: torchslim eval FILE --json (Fashion-MNIST test split; no latency)",
    )
    print(f"updated {len(diffs)} values in {sorted(results)}; wrote results/artifacts.{{json,md}}")


if __name__ == "__main__":
    main()
