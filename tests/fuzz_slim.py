"""Seeded mutation fuzzer for ``.slim`` files (run by tests/test_fuzz.py in a subprocess with time and
memory limits): each case edits a committed file's header or tensors as an attacker could, with the
checksum recomputed (random values anywhere, or structure-aware edits that keep the file looking
consistent: plausible geometry, shifted indices, NaN / infinite floats, swapped tensors), then
loads and runs it. Every case must end as ``ok`` (loads and runs, with finite outputs unless the
file holds weights near the float range's end) or ``refused`` (a SlimFileError); the outcome of
each case is appended to a log line by line, so a crash (a signal) is attributed to the case that
caused it.

    python tests/fuzz_slim.py SEED CASES LOG
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ART = Path(__file__).resolve().parents[1] / "benchmarks" / "artifacts"
FILES = [
    "lenet300_100_deep_compression.slim",
    "lenet300_100_svd.slim",
    "lenet300_100_magnitude.slim",
    "lenet5_deep_compression.slim",
    "vgg_small_xnor.slim",
    "vgg_small_int8.slim",
    "vgg_small_kmeans4.slim",
]
VALUES = [
    0,
    1,
    -1,
    2**31 - 1,
    -(2**31),
    10**12,
    -(10**12),
    0.5,
    float("nan"),
    "",
    "x",
    "load",
    "meta",
    None,
    True,
    [],
    [1, 2],
    {},
    {"a": 1},
]


def _paths(node, prefix=()):
    """Every (path, value) inside a JSON tree."""
    yield prefix, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def mutate_header(header: dict, rng: random.Random) -> dict:
    h = json.loads(json.dumps(header))
    paths = [p for p, _ in _paths(h) if p]
    path = rng.choice(paths)
    parent = h
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.2 and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(VALUES)
    return h


def mutate_tensors(tensors: dict, rng: random.Random) -> None:
    key = rng.choice(sorted(tensors))
    t = tensors[key]
    r = rng.random()
    if r < 0.2 and t.numel():
        tensors[key] = t.flatten()[: rng.randrange(t.numel())].clone()  # truncated
    elif r < 0.3:
        tensors[key] = torch.cat([t.flatten(), t.flatten()[:7]])  # extended
    elif t.numel():
        flat = t.flatten().clone()
        info = torch.iinfo(t.dtype) if not t.dtype.is_floating_point else torch.finfo(t.dtype)
        for _ in range(rng.randint(1, 4)):
            flat[rng.randrange(flat.numel())] = rng.choice([info.min, info.max, 0, -1, 1, 10**6 % int(info.max)])
        tensors[key] = flat.view(t.shape)


GEOMETRY = {
    "in_channels",
    "out_channels",
    "in_features",
    "out_features",
    "kernel_size",
    "padding",
    "stride",
    "dilation",
    "groups",
    "nnz",
    "bits",
    "input_size",
    "input_shape",
    "num_classes",
    "eps",
}


def _plausible(v, rng: random.Random):
    """A value of the same kind that a size check could take for real: off by one, doubled, halved,
    far larger, or (floats) NaN / infinite / zero."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return rng.choice([v + 1, v - 1, 2 * v, max(v // 2, 1), 64 * v, 1300, 4096])
    if isinstance(v, float):
        return rng.choice([float("nan"), float("inf"), -float("inf"), 0.0, -v, v * 1e30])
    if isinstance(v, list) and v:
        v = list(v)
        i = rng.randrange(len(v))
        v[i] = _plausible(v[i], rng)
        return v
    return v


def mutate_structured(header: dict, tensors: dict, rng: random.Random) -> dict:
    """Edits that keep the file looking consistent (the ones that got past validation before):
    a geometry field of a layer or the model changed to a plausible value; integer index tensors
    shifted by a small amount within their range or reversed (unsorted row pointers); float
    tensors given NaN / infinities; two tensors of one shape and dtype swapped; two per-channel
    vectors of one dtype and different lengths swapped (layers of other widths)."""
    h = json.loads(json.dumps(header))
    kind = rng.randrange(5)
    if kind == 0:
        paths = [p for p, v in _paths(h) if p and p[-1] in GEOMETRY and not isinstance(v, dict)]
        if paths:
            path = rng.choice(paths)
            parent = h
            for k in path[:-1]:
                parent = parent[k]
            parent[path[-1]] = _plausible(parent[path[-1]], rng)
            return h
    ints = [k for k, t in tensors.items() if not t.dtype.is_floating_point and t.numel() > 1]
    floats = [k for k, t in tensors.items() if t.dtype.is_floating_point and t.numel()]
    if kind == 1 and ints:
        key = rng.choice(ints)
        flat = tensors[key].flatten().clone()
        lo = rng.randrange(flat.numel())
        part = flat[lo : lo + rng.randint(1, 64)]
        if rng.random() < 0.5:
            part += rng.choice([1, -1, 2])
        else:
            part.copy_(part.flip(0))
        tensors[key] = flat.view(tensors[key].shape)
    elif kind == 2 and floats:
        key = rng.choice(floats)
        flat = tensors[key].flatten().clone()
        flat[rng.randrange(flat.numel())] = rng.choice([float("nan"), float("inf"), -float("inf")])
        tensors[key] = flat.view(tensors[key].shape)
    elif kind == 3:
        vectors = [k for k, t in tensors.items() if t.dim() == 1 and t.dtype.is_floating_point]
        pairs = [(a, b) for a in vectors for b in vectors if a < b and tensors[a].numel() != tensors[b].numel()]
        if pairs:
            a, b = rng.choice(pairs)
            tensors[a], tensors[b] = tensors[b], tensors[a]
    else:
        same = [
            (a, b)
            for a in tensors
            for b in tensors
            if a < b and tensors[a].dtype == tensors[b].dtype and tensors[a].shape == tensors[b].shape
        ]
        if same:
            a, b = rng.choice(same)
            tensors[a], tensors[b] = tensors[b], tensors[a]
    return h


def main(seed: int, cases: int, log: Path) -> None:
    from safetensors.torch import save as st_save

    import torchslim as ts
    from torchslim.export.slim import SlimFileError, _digest, read_slim

    warnings.simplefilter("ignore")
    rng = random.Random(seed)
    originals = {f: read_slim(ART / f) for f in FILES}
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    with tempfile.TemporaryDirectory() as d, log.open("a") as out:
        for i in range(cases):
            name = rng.choice(FILES)
            tensors, header = originals[name]
            tensors = {k: v.clone() for k, v in tensors.items()}
            r = rng.random()
            if r < 0.35:
                header = mutate_header(header, rng)
            elif r < 0.7:
                mutate_tensors(tensors, rng)
            else:
                header = mutate_structured(header, tensors, rng)
            head = json.dumps(header)
            path = Path(d) / f"case{i}.slim"
            path.write_bytes(st_save(tensors, metadata={"torchslim": head, "sha256": _digest(head, tensors)}))
            out.write(f"{i} {name} start\n")
            out.flush()
            try:
                with torch.no_grad():
                    y = ts.load(path)(x)
                huge = any(t.is_floating_point() and bool((t.abs() >= 1e30).any()) for t in tensors.values())
                # NaN / inf are refused at load, so a non-finite output can only come from overflow
                outcome = "ok" if huge or bool(torch.isfinite(y).all()) else "BAD non-finite output"
            except SlimFileError:
                outcome = "refused"
            except Exception as e:  # noqa: BLE001 - what the test must never see
                outcome = f"BAD {type(e).__name__}: {str(e)[:160]}"
            if outcome.startswith("BAD") and os.environ.get("FUZZ_KEEP"):
                Path(os.environ["FUZZ_KEEP"]).mkdir(exist_ok=True)
                (Path(os.environ["FUZZ_KEEP"]) / path.name).write_bytes(path.read_bytes())
            out.write(f"{i} {name} {outcome}\n")
            out.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
