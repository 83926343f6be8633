"""Seeded mutation fuzzer for ``.slim`` files (run by tests/test_fuzz.py in a subprocess with time and
memory limits): each case edits a committed file's header or tensors as an attacker could, with the
checksum recomputed, then loads and runs it. Every case must end as ``ok`` (loads and runs) or
``refused`` (a SlimFileError); the outcome of each case is appended to a log line by line, so a
crash (a signal) is attributed to the case that caused it.

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


def main(seed: int, cases: int, log: Path) -> None:
    from safetensors.torch import save as st_save

    import torchslim as ts
    from torchslim.export.slim import SlimFileError, _digest, read_slim

    warnings.simplefilter("ignore")
    rng = random.Random(seed)
    originals = {f: read_slim(ART / f) for f in FILES}
    x = torch.randn(2, 1, 28, 28)
    with tempfile.TemporaryDirectory() as d, log.open("a") as out:
        for i in range(cases):
            name = rng.choice(FILES)
            tensors, header = originals[name]
            tensors = {k: v.clone() for k, v in tensors.items()}
            if rng.random() < 0.5:
                header = mutate_header(header, rng)
            else:
                mutate_tensors(tensors, rng)
            head = json.dumps(header)
            path = Path(d) / f"case{i}.slim"
            path.write_bytes(st_save(tensors, metadata={"torchslim": head, "sha256": _digest(head, tensors)}))
            out.write(f"{i} {name} start\n")
            out.flush()
            try:
                with torch.no_grad():
                    ts.load(path)(x)
                outcome = "ok"
            except SlimFileError:
                outcome = "refused"
            except Exception as e:  # noqa: BLE001 - what the test must never see
                outcome = f"BAD {type(e).__name__}: {str(e)[:160]}"
                if os.environ.get("FUZZ_KEEP"):
                    Path(os.environ["FUZZ_KEEP"]).mkdir(exist_ok=True)
                    (Path(os.environ["FUZZ_KEEP"]) / path.name).write_bytes(path.read_bytes())
            out.write(f"{i} {name} {outcome}\n")
            out.flush()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
