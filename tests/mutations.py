"""Replay the mutations the suite must catch: each bug is written into a copy of the project, the
test that names it is run there, and that test must fail. A mutation whose text is no longer in its
file is reported as stale (the code moved on: update or drop the entry).

    .venv/bin/python tests/mutations.py                 # every mutation, 2 at a time
    .venv/bin/python tests/mutations.py --only sparse   # those whose file or test contains "sparse"
    .venv/bin/python tests/mutations.py --list          # check every entry still applies; run nothing

tests/mutations.md is the full history of mutations applied by hand; the ones below are written as
exact text replacements so that they replay unattended (CI runs the replay after the tests: about
2 minutes on 2 cores; a test checks that every entry still applies)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    path: str  # relative to the project root
    old: str  # must occur exactly once
    new: str
    test: str  # pytest node id (or -k expression after a space) that must fail


MUTATIONS = [
    Mutation(  # the byte counters' word totals keep only the low byte of each pair (AVX2 form only)
        "src/torchslim/runtime/_binary_kernels.py",
        "v = builder.add(lo, builder.lshr(v, ir.Constant(vt, [w] * vt.count)))",
        "v = lo",
        "tests/test_binary.py -k avx2_only_cpu",
    ),
    Mutation(  # a later chunk of patch rows overwrites the earlier chunks' counts instead of adding
        "src/torchslim/runtime/_binary_kernels.py",
        "xnor_tile(flat, patch, ob, acc, q0, min(q0 + QCHUNK, nq), q0 > 0)",
        "xnor_tile(flat, patch, ob, acc, q0, min(q0 + QCHUNK, nq), False)",
        "tests/test_binary.py -k xnor_popcount_conv_exact_with_padding",
    ),
    Mutation(
        "src/torchslim/prune/regularize.py",
        'elif fn in in_fns and getattr(layer, "groups", 1) == 1:',
        "elif False:",
        "tests/test_prune_regularize.py -k depgraph_gradient",
    ),
    Mutation(
        "src/torchslim/prune/regularize.py",
        "                s = energy.sqrt()",
        "                s = energy",
        "tests/test_prune_regularize.py -k depgraph_gradient",
    ),
    Mutation(
        "src/torchslim/runtime/sparse.py",
        'if name == "kernel" and "op_state" in self.__dict__:',
        "if False:",
        "tests/test_prune_magnitude.py -k custom_ops",
    ),
    Mutation(
        "src/torchslim/search.py",
        "for b in [None, *model.layers[i + 1 :]]:",
        "for b in [None]:",
        "tests/test_search.py -k local_optimum",
    ),
    Mutation(
        "src/torchslim/search.py",
        "and model.drop(trial) <= limit + 1e-9:",
        ":",
        "tests/test_search.py -k local_optimum",
    ),
    Mutation(
        "src/torchslim/runtime/binary.py",
        "            if t.numel() != n:",
        "            if False:",
        "tests/test_export.py -k binary_per_channel_vectors",
    ),
    Mutation(
        "src/torchslim/export/slim.py",
        "if isinstance(var, torch.Tensor) and var.numel() and float(var.min()) < 0:",
        "if False:",
        "tests/test_fuzz.py",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "        if hi - lo <= 0:\n            return 1.0, 0\n        scale = (hi - lo) / levels",
        "        if hi - lo <= 0:\n            return 1.0, 0\n        scale = (hi - lo) / (levels + 1)",
        "tests/test_quant_uniform.py -k Int8Contract and prepare_matches_reference",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "self._observe(self.out_range, F.relu(y) if self.relu_after else y)",
        "self._observe(self.out_range, y)",
        "tests/test_quant_uniform.py -k Int8Contract and prepare_matches_reference",
    ),
    Mutation(
        "src/torchslim/prune/filters.py",
        'GroupMagnitudeImportance(p=1 if config.criterion == "l1" else 2)',
        'GroupMagnitudeImportance(p=2 if config.criterion == "l1" else 1)',
        "tests/test_prune_filters.py -k prepare_matches_reference",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "rng.mul_(RANGE_SHRINKS[int(err.argmin())])",
        "rng.mul_(RANGE_SHRINKS[int(err.argmax())])",
        "tests/test_quant_uniform.py -k mse_activation",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "    layer.round_up = up(True).detach()",
        "    layer.round_up = nearest_up",
        "tests/test_quant_uniform.py -k adaround",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "q = torch.clamp(torch.floor(self.weight / s) + self.round_up, qmin, qmax) * s",
        "q = torch.clamp(torch.floor(self.weight / s) + 1 - self.round_up, qmin, qmax) * s",
        "tests/test_quant_uniform.py -k adaround",
    ),
    Mutation(
        "src/torchslim/distill/__init__.py",
        "kd_loss(standardize_logits(outputs), standardize_logits(t_out_d), self.T)",
        "kd_loss(standardize_logits(outputs), t_out_d, self.T)",
        "tests/test_distill.py -k standardization",
    ),
    Mutation(
        "src/torchslim/recipe.py",
        'load(out / "00_baseline.slim", model=fresh())',
        'load(out / "00_baseline.slim")',
        "tests/test_recipe_cli.py -k distilled_from_its_original",
    ),
    Mutation(
        "src/torchslim/search.py",
        '    if not state["chosen"]:\n        raise AutoError(',
        "    if False:\n        raise AutoError(",
        "tests/test_search.py -k nothing_to_gain",
    ),
    Mutation(
        "src/torchslim/core/fold.py",
        'return getattr(m, "fx_leaf", False) or isinstance(m, self.leaves)',
        "return isinstance(m, self.leaves)",
        "tests/test_core_fold.py -k packed_layer",
    ),
    Mutation(
        "src/torchslim/quant/pq.py",
        "    codes = torch.cdist(x, c).argmin(2)\n    return codes.t().contiguous(), c",
        "    codes = torch.cdist(x, c).argmax(2)\n    return codes.t().contiguous(), c",
        "tests/test_quant_pq.py -k prepare_matches_reference",
    ),
    Mutation(
        "src/torchslim/search.py",
        "if takes and model.drop(move) <= limit and model.cost(move) < model.cost({}):",
        "if takes and model.cost(move) < model.cost({}):",
        "tests/test_search.py -k whole_model_or_not",
    ),
    Mutation(
        "src/torchslim/runtime/compact.py",
        "view(self.rows, self.m) + self.offsets",
        "view(self.rows, self.m)",
        "tests/test_onnx.py -k product_quantized",
    ),
    Mutation(
        "src/torchslim/runtime/product.py",
        "return computed_layer(self, ProductWeight(self.indices(), self.bits, self.codebooks, shape), self.bias)",
        "return dense_module(self, self.weight2d(), self.bias)",
        "tests/test_onnx.py -k product_quantized",
    ),
    Mutation(
        "src/torchslim/search.py",
        "                    frac[m] *= f",
        "                    frac[m] = f",
        "tests/test_search.py -k composes",
    ),
    Mutation(
        "src/torchslim/search.py",
        "gain = (cost - c) / max(d - drop, 0.01)",
        "gain = cost - c",
        "tests/test_search.py -k greedy",
    ),
    Mutation(
        "src/torchslim/search.py",
        '(o["top1"] >= r["top1"] and o[key] <= r[key])',
        '(o["top1"] >= r["top1"])',
        "tests/test_search.py -k pareto",
    ),
    Mutation(
        "src/torchslim/search.py",
        "        m.momentum = None\n",
        "",
        "tests/test_search.py -k adapt_bn",
    ),
    Mutation(
        "src/torchslim/search.py",
        "return min(within, key=lambda r: r[key]), True",
        "return max(within, key=lambda r: r[key]), True",
        "tests/test_search.py -k best_point",
    ),
    Mutation(
        "src/torchslim/train/loop.py",
        "            if i == steps:\n                break\n",
        "",
        "tests/test_train.py -k steps_per_epoch",
    ),
    Mutation(
        "src/torchslim/train/loop.py",
        "    total = cfg.epochs * steps\n",
        "    total = cfg.epochs * len(train_loader)\n",
        "tests/test_train.py -k steps_per_epoch",
    ),
    Mutation(
        "src/torchslim/core/fold.py",
        'return getattr(m, "fx_leaf", False) or isinstance(m, self.leaves)',
        "return isinstance(m, self.leaves)",
        "tests/test_quant_uniform.py -k packed_layer",
    ),
    Mutation(
        "src/torchslim/runtime/base.py",
        "with torch.inference_mode(False), torch.no_grad():",
        "with torch.no_grad():",
        "tests/test_quant_uniform.py -k inference_mode",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "layer.bias_shift = (want[layer] - got).to(layer.weight.dtype)",
        "layer.bias_shift = (got - want[layer]).to(layer.weight.dtype)",
        "tests/test_quant_uniform.py -k bias_correction",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "new.set_weight(self.weight, self.int8_bias(), self.round_up)",
        "new.set_weight(self.weight, self.bias, self.round_up)",
        "tests/test_quant_uniform.py -k bias_correction",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        "        layer.raw = True\n        got = _channel_means(model, layer, batches)",
        "        got = _channel_means(model, layer, batches)",
        "tests/test_quant_uniform.py -k bias_correction",
    ),
    Mutation(
        "src/torchslim/lowrank/factorize.py",
        "r = [min(top, -(-k // c.round_to) * c.round_to) for k, top in zip(r, full[n])]",
        "r = [max(c.round_to, k // c.round_to * c.round_to) for k, top in zip(r, full[n])]",
        "tests/test_lowrank.py -k round_to_rounds",
    ),
    Mutation(
        "src/torchslim/prune/variational.py",
        "+ 0.5 * F.softplus(-la)).sum()",
        "- 0.5 * F.softplus(-la)).sum()",
        "tests/test_prune_variational.py -k kl_matches",
    ),
    Mutation(
        "src/torchslim/prune/variational.py",
        "var = _op(m, x * x, getattr(m, PARAM).exp(), None)",
        "var = _op(m, x, getattr(m, PARAM).exp(), None)",
        "tests/test_prune_variational.py -k local_reparameterisation",
    ),
    Mutation(
        "src/torchslim/prune/variational.py",
        "return log_alpha(m) < threshold",
        "return log_alpha(m) <= threshold + 1.0",
        "tests/test_prune_variational.py -k masked_mean",
    ),
    Mutation(
        "src/torchslim/prune/variational.py",
        "min(1.0, self.step / c.warmup_steps)",
        "1.0",
        "tests/test_prune_variational.py -k ramp",
    ),
    Mutation(
        "src/torchslim/api.py",
        "OVERFLOW_MARGIN = 1e4",
        "OVERFLOW_MARGIN = 1.0",
        "tests/test_foreign_regressions.py -k float_range_end",
    ),
    Mutation(
        "src/torchslim/runtime/sparse.py",
        'kernel = "sparse" if density <= SPARSE_MAX_DENSITY',
        'kernel = "sparse" if density < SPARSE_MAX_DENSITY',
        "tests/test_prune_magnitude.py -k rule_of_density",
    ),
    Mutation(
        "src/torchslim/export/slim.py",
        "object_pairs_hook=_unique_keys)",
        ")",
        "tests/test_export.py -k duplicate_header",
    ),
    Mutation(
        "src/torchslim/quant/uniform.py",
        'if "avx512_vnni" not in cpu_flags():',
        'if "avx512_vnni" in cpu_flags():',
        "tests/test_quant_uniform.py -k warning_follows_the_cpu",
    ),
    Mutation(
        "src/torchslim/engines/views.py",
        "StridedMaxPool2d.applies(m) and calls[user.target] == 1:",
        "StridedMaxPool2d.applies(m):",
        "tests/test_measure.py -k shared_and_ceil",
    ),
    Mutation(
        "src/torchslim/runtime/pool.py",
        "and not m.ceil_mode",
        "and True",
        "tests/test_measure.py -k shared_and_ceil",
    ),
    Mutation(
        "src/torchslim/recipe.py",
        "fcntl.LOCK_EX | fcntl.LOCK_NB",
        "fcntl.LOCK_SH | fcntl.LOCK_NB",
        "tests/test_recipe_cli.py -k lock_each_other",
    ),
    Mutation(
        "src/torchslim/recipe.py",
        "loaders = make_loaders(recipe.data, seed=recipe.train.seed)",
        "loaders = make_loaders(recipe.data, seed=0)",
        "tests/test_recipe_cli.py -k data_order_follows",
    ),
    Mutation(
        "src/torchslim/measure/counts.py",
        'rows[_n]["macs"] += int(dense)',
        'rows[_n]["macs"] = int(dense)',
        "tests/test_measure.py -k called_twice",
    ),
    Mutation(
        "benchmarks/update_results.py",
        'CHECKED = ("top1", "bytes", "params", "macs")',
        'CHECKED = ("bytes", "params", "macs")',
        "tests/test_results.py -k guards",
    ),
    Mutation(
        "src/torchslim/prune/magnitude.py",
        "keep[w.flatten().argsort(stable=True)[:k]] = False",
        "keep[w.flatten().argsort(stable=True, descending=True)[:k]] = False",
        "tests/test_prune_magnitude.py -k TestMagnitudeContract",
    ),
    Mutation(
        "src/torchslim/runtime/_layout.py",
        'per_out = m.cols if hasattr(m, "cols") else m.in_features',
        'per_out = getattr(m, "in_channels", 0) or (m.cols if hasattr(m, "cols") else m.in_features)',
        "tests/test_runtime.py -k mac_rule",
    ),
    Mutation(
        "src/torchslim/export/slim.py",
        "            _check_finite(m)\n",
        "",
        "tests/test_export.py -k non_finite",
    ),
    Mutation(
        "src/torchslim/runtime/uniform.py",
        "if not bool((self.scale > 0).all()):",
        "if not bool((self.scale >= 0).all()):",
        "tests/test_export.py -k non_finite",
    ),
    Mutation(
        "src/torchslim/runtime/sparse.py",
        "if x.dim() != 4 or x.shape[1] != self.in_channels:",
        "if x.dim() != 4:",
        "tests/test_runtime.py -k other_channels",
    ),
    Mutation(
        "src/torchslim/runtime/sparse.py",
        "and weights >= SPARSE_MIN_WEIGHTS",
        "and weights > SPARSE_MIN_WEIGHTS",
        "tests/test_prune_magnitude.py -k rule_of_density",
    ),
    Mutation(
        "src/torchslim/recipe.py",
        "    if links:\n",
        "    if False:\n",
        "tests/test_recipe_cli.py -k run_folder_rules",
    ),
    Mutation(
        "src/torchslim/recipe.py",
        'if entries and not any(p.name == "state.json"',
        'if False and not any(p.name == "state.json"',
        "tests/test_recipe_cli.py -k run_folder_rules",
    ),
    Mutation(
        "src/torchslim/recipe.py",
        "if _is_our_tmp(stale.name) and not stale.is_symlink():",
        'if stale.name.endswith("tmp") and not stale.is_symlink():',
        "tests/test_recipe_cli.py -k restart_removes_only",
    ),
    Mutation(
        "src/torchslim/recipe.py",
        'raise RecipeError(f"{e.filename or out}: {e.strerror or e}; free space or choose another --out") from None',
        "raise",
        "tests/test_recipe_cli.py -k run_folder_rules",
    ),
    Mutation(
        "src/torchslim/runtime/base.py",
        "ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1",
        "ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 2",
        "tests/test_binary.py -k torch_export",
    ),
    Mutation(
        "src/torchslim/runtime/base.py",
        "getattr(layer, name).copy_(t)",
        "getattr(layer, name).copy_(t * (name != 'bias'))",
        "tests/test_binary.py -k torch_export",
    ),
    Mutation(
        "src/torchslim/runtime/base.py",
        "return (y.dequantize() if y.is_quantized else y).contiguous()",
        "return y.contiguous()",
        "tests/test_quant_uniform.py -k torch_export",
    ),
    Mutation(
        "src/torchslim/export/huffman.py",
        "        if pos >= nbits:\n            return -1\n",
        "",
        "tests/test_quant_kmeans.py -k huffman_stream_that_ends_early",
    ),
    Mutation(
        "src/torchslim/export/slim.py",
        '            if all(hasattr(m, a) for a in ("out_channels", "kernel_size", "stride", "padding")):',
        "            if False:",
        "tests/test_export.py -k explode",
    ),
    Mutation(
        "src/torchslim/core/inputs.py",
        "return check_shape([c, s, s])",
        "return (c, s, s)",
        "tests/test_export.py -k capped_like",
    ),
    Mutation(
        "src/torchslim/measure/report.py",
        "return max(1, min(want, int(share * memory) // per_sample))",
        "return want",
        "tests/test_export.py -k sized_to_memory",
    ),
    Mutation(
        "src/torchslim/runtime/uniform.py",
        "zp = torch.round(-lo / scale).clamp(0, qmax)",
        "zp = torch.floor(-lo / scale).clamp(0, qmax)",
        "tests/test_quant_uniform.py -k TestUniformWeightOnlyContract",
    ),
    Mutation(
        "src/torchslim/quant/kmeans.py",
        "c = torch.where(counts > 0, sums / counts.clamp(min=1), c)",
        "c = torch.where(counts > 0, sums / (counts + 1), c)",
        "tests/test_quant_kmeans.py -k TestKMeansContract",
    ),
    Mutation(
        "src/torchslim/quant/kmeans.py",
        "return torch.linspace(float(w.min()), float(w.max()), k)",
        "return torch.linspace(float(w.min()) / 2, float(w.max()) / 2, k)",
        "tests/test_quant_kmeans.py -k TestKMeansContract",
    ),
    Mutation(
        "src/torchslim/runtime/sparse.py",
        "elif conv and (macs is None or macs > SPARSE_MAX_CONV_MACS):",
        "elif conv and macs is None:",
        "tests/test_prune_magnitude.py -k rule_of_density",
    ),
]


def _applies(m: Mutation) -> str | None:
    """None when ``m.old`` occurs exactly once in its file, else why not."""
    path = ROOT / m.path
    if not path.exists():
        return f"{m.path} does not exist"
    n = path.read_text().count(m.old)
    return None if n == 1 else f"{m.old!r} occurs {n} times in {m.path}"


def replay(m: Mutation, timeout: int) -> tuple[str, str]:
    """('caught' | 'SURVIVED' | 'broken' | 'stale' | 'timeout', detail) for one mutation, in a copy of the tree."""
    why = _applies(m)
    if why:
        return "stale", why
    with tempfile.TemporaryDirectory(prefix="torchslim-mutant-") as d:
        copy = Path(d) / "p"
        skip = shutil.ignore_patterns(".git", ".venv*", "runs", "__pycache__", "cache", "*.egg-info")
        shutil.copytree(ROOT, copy, ignore=skip, symlinks=True)
        target = copy / m.path
        target.write_text(target.read_text().replace(m.old, m.new))
        cmd = [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", *m.test.split(" ", 2)]
        env = {**os.environ, "PYTHONPATH": str(copy / "src"), "OMP_NUM_THREADS": "1"}
        try:
            r = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "timeout", f"past {timeout} s"
    if r.returncode == 5:
        return "stale", f"no test matches {m.test}"
    if r.returncode == 0:
        return "SURVIVED", "the test passed with the bug in place"
    if r.returncode in (3, 4):  # internal or usage error (e.g. a bad -k): no test ran (2, a failed import, counts)
        return "broken", f"pytest exit {r.returncode}, not a test failure: {r.stdout[-300:]}{r.stderr[-300:]}"
    return "caught", f"exit {r.returncode}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="replay the mutations whose file or test contains this text")
    ap.add_argument("--list", action="store_true", help="check that every mutation still applies; run nothing")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per mutation's test run")
    a = ap.parse_args()
    chosen = [m for m in MUTATIONS if not a.only or a.only in m.path or a.only in m.test]
    if a.list:
        stale = [(m, why) for m in chosen if (why := _applies(m))]
        for m, why in stale:
            print(f"stale: {m.test}: {why}")
        print(f"{len(chosen) - len(stale)} of {len(chosen)} mutations apply")
        return 1 if stale else 0
    with ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda m: (m, *replay(m, a.timeout)), chosen))
    for m, outcome, detail in results:
        print(f"{outcome:8s} {m.path}: {m.old[:50]!r} -> {m.new[:50]!r} [{m.test}] {detail}")
    bad = [r for r in results if r[1] != "caught"]
    print(f"{len(results) - len(bad)} of {len(results)} mutations caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
