"""``torchslim auto``: the search's parts against hand-computed answers, then one small search end
to end on real data (its points re-measured, its front, its resume, its recipes rerun)."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.search import (
    FLOAT,
    INT8,
    KEEP,
    AutoConfig,
    AutoError,
    _interp,
    _Model,
    adapt_bn,
    best_point,
    greedy_path,
    local_optimum,
    pareto,
    pick_points,
    whole_model_int8,
)


def _toy() -> _Model:
    """Two layers: pruning ``a`` halves its MACs and ``b``'s inputs; ``b`` can be int8 or pruned."""
    return _Model(
        sens={"a": {"filters:0.5": 1.0}, "b": {"int8": 0.1, "filters:0.5": 0.3}},
        fractions={"a": {"filters:0.5": {"a": 0.5, "b": 0.5}}, "b": {"filters:0.5": {"b": 0.5}}},
        tables={
            "a": {"dense|float": [[1.0, 10.0], [0.5, 5.0]]},
            "b": {"dense|float": [[1.0, 10.0], [0.5, 5.0]], "dense|int8": [[1.0, 8.0], [0.5, 4.0]]},
        },
        layers=["a", "b"],
    )


def test_interp_is_exact_at_measurements_and_linear_between():
    pts = [[1.0, 10.0], [0.5, 4.0], [0.25, 3.0]]
    assert _interp(pts, 1.0) == 10.0 and _interp(pts, 0.5) == 4.0 and _interp(pts, 0.25) == 3.0
    assert _interp(pts, 0.75) == pytest.approx(7.0)
    assert _interp(pts, 0.125) == pytest.approx(1.5)  # below the smallest: proportional
    assert _interp([[1.0, 8.0]], 0.5) == pytest.approx(4.0)


def test_cost_composes_mac_fractions_of_neighbouring_prunes():
    """Catches: a layer's MAC fraction taken from the last prune that touched it instead of the
    product (pruning ``a``'s outputs and ``b``'s outputs leaves b a quarter of its MACs)."""
    m = _toy()
    f5 = ("filters", 0.5)
    assert m.cost({}) == 20.0
    assert m.cost({"a": (f5, FLOAT)}) == pytest.approx(5.0 + 5.0)
    assert m.cost({"a": (f5, FLOAT), "b": (f5, FLOAT)}) == pytest.approx(5.0 + 2.5)
    assert m.cost({"b": (KEEP, ("int8", None))}) == pytest.approx(18.0)
    assert m.drop({"a": (f5, FLOAT), "b": (f5, ("int8", None))}) == pytest.approx(1.4)


def test_greedy_takes_the_cheapest_saving_per_point_first_and_respects_the_limit():
    """Catches: a greedy step ranked by cost saved alone (pruning ``a`` saves most but costs 1 pp;
    int8 on ``b`` saves 2 per 0.1 pp and must come first) and a path past the drop limit."""
    m = _toy()
    opts = {"a": ([KEEP, ("filters", 0.5)], [FLOAT]), "b": ([KEEP, ("filters", 0.5)], [FLOAT, ("int8", None)])}
    path = greedy_path(m, opts, limit=0.5)
    assert path[0]["cost"] == 20.0 and path[0]["drop"] == 0.0
    assert path[1]["choice"]["b"] == ["keep", "int8"]
    assert all(p["drop"] <= 0.5 for p in path)
    assert all(q["cost"] < p["cost"] for p, q in zip(path, path[1:]))
    assert path[-1]["choice"]["a"] == ["keep", "float"]  # pruning a would pass the limit
    full = greedy_path(m, opts, limit=10.0)
    assert full[-1]["choice"] == {"a": ["filters:0.5", "float"], "b": ["filters:0.5", "int8"]}
    assert full[-1]["cost"] == pytest.approx(5.0 + 2.0)


def test_local_optimum_trades_one_layers_saving_for_anothers_within_the_budget():
    """Greedy takes int8 on ``b`` first (2 saved per 0.1 pp beats 6 per 0.4 pp) and then cannot
    prune ``a`` within 0.45 pp: cost 20. The pair move (prune ``a``, ``b`` back to float) gives 16 at
    0.4 pp. Catches: a local search of single changes only (stuck at greedy's 20), a move accepted
    past the drop limit (both: 14 at 0.5 pp) or one that raises the cost."""
    m = _Model(
        sens={"a": {"filters:0.5": 0.4}, "b": {"int8": 0.1}},
        fractions={"a": {"filters:0.5": {"a": 0.5}}, "b": {}},
        tables={
            "a": {"dense|float": [[1.0, 12.0], [0.5, 6.0]]},
            "b": {"dense|float": [[1.0, 10.0]], "dense|int8": [[1.0, 8.0]]},
        },
        layers=["a", "b"],
    )
    opts = {"a": ([KEEP, ("filters", 0.5)], [FLOAT]), "b": ([KEEP], [FLOAT, INT8])}
    last = greedy_path(m, opts, limit=0.45)[-1]
    assert last["cost"] == pytest.approx(20.0) and last["choice"]["b"] == ["keep", "int8"]
    best = local_optimum(m, opts, last["choice"], 0.45)
    assert best["choice"] == {"a": ["filters:0.5", "float"], "b": ["keep", "float"]}
    assert best["cost"] == pytest.approx(16.0) and best["drop"] == pytest.approx(0.4)
    same = local_optimum(m, opts, best["choice"], 0.45)  # a local optimum stays put
    assert same["cost"] == pytest.approx(16.0)


def test_latency_takes_int8_for_the_whole_model_or_not_at_all():
    """Catches: int8 taken layer by layer for latency (a partial int8 chain pays quantize / dequantize
    at every boundary, which the tables cannot see), or taken although its drops pass the limit."""
    m = _toy()
    opts = {"a": ([KEEP, ("filters", 0.5)], [FLOAT, INT8]), "b": ([KEEP, ("filters", 0.5)], [FLOAT, INT8])}
    m.sens["a"]["int8"] = 0.2
    m.tables["a"]["dense|int8"] = [[1.0, 6.0], [0.5, 3.0]]
    restricted, start = whole_model_int8(m, opts, limit=0.5)
    assert start == {"a": (KEEP, INT8), "b": (KEEP, INT8)}
    assert all(fmt == [INT8] for _, fmt in restricted.values())
    path = greedy_path(m, restricted, 10.0, start)
    assert path[1]["choice"] == {"a": ["keep", "int8"], "b": ["keep", "int8"]}
    assert all(q == "int8" for p in path[1:] for _, q in p["choice"].values())
    restricted, start = whole_model_int8(m, opts, limit=0.25)  # 0.2 + 0.1 > 0.25
    assert start is None and all(fmt == [FLOAT] for _, fmt in restricted.values())


def test_pick_points_takes_the_last_config_within_each_rung():
    path = [{"drop": d, "cost": 10 - d, "choice": {"x": [str(d), "float"]}} for d in (0.0, 0.2, 0.4, 0.9, 1.9, 3.5)]
    got = pick_points(path, 0.5, 3)  # rungs 0.5, 1.41, 4.0
    assert [p["drop"] for p in got] == [0.4, 0.9, 3.5]
    assert pick_points(path[:2], 0.5, 3) == [path[1]]  # repeats removed


def test_pareto_keeps_exactly_the_undominated():
    """Catches: a front that compares top-1 only (a cheaper, equally accurate point dominates)."""
    rows = [
        {"point": "a", "top1": 90.0, "bytes": 100},
        {"point": "b", "top1": 91.0, "bytes": 200},
        {"point": "c", "top1": 90.0, "bytes": 150},
        {"point": "d", "top1": 89.0, "bytes": 50},
    ]
    assert [r["point"] for r in pareto(rows, "bytes")] == ["a", "b", "d"]


def test_best_point_is_the_cheapest_within_the_drop_else_the_most_accurate():
    """Catches: the most expensive point within the drop returned, or the cheapest when none is within."""
    rows = [
        {"point": "a", "top1": 90.0, "drop": 0.4, "bytes": 300},
        {"point": "b", "top1": 89.8, "drop": 0.6, "bytes": 100},
        {"point": "c", "top1": 90.1, "drop": 0.3, "bytes": 500},
    ]
    assert best_point(rows, "bytes", 0.5) == (rows[0], True)
    assert best_point(rows, "bytes", 0.1) == (rows[2], False)


def test_adapt_bn_gives_the_exact_mean_and_variance_of_the_batches():
    """Catches: statistics re-estimated with the default momentum (an exponential average that keeps
    part of the stale statistics) instead of the cumulative average over the batches."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(100.0)
    model = nn.Sequential(bn)
    batches = [(torch.randn(8, 3, 4, 4) * 2 + 1, torch.zeros(8)) for _ in range(4)]
    adapt_bn(model, batches, batches=4)
    x = torch.cat([b[0] for b in batches])
    means = torch.stack([b[0].mean((0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(bn.running_mean, means, atol=1e-5)
    assert torch.allclose(bn.running_mean, x.mean((0, 2, 3)), atol=1e-5)  # equal batches: the overall mean
    assert bn.momentum == 0.1 and not model.training


def test_config_errors_name_the_field():
    for bad, word in (
        ({"objective": "speed"}, "objective"),
        ({"max_drop": -1}, "max_drop"),
        ({"engine": "onnxruntime"}, "engine"),
        ({"filter_ratios": (1.5,)}, "filter_ratios"),
        ({"points": 0}, "points"),
        ({"round_to": 0}, "round_to"),
    ):
        with pytest.raises(AutoError, match=word):
            AutoConfig(**bad)


@pytest.fixture(scope="module")
def small_search(tmp_path_factory):
    """lenet5 trained briefly on 2,000 Fashion-MNIST images, then a bytes search with two points."""
    from pathlib import Path

    from torchslim.data import DataConfig, make_loaders
    from torchslim.data.readers import DEFAULT_FASHION_DIR

    fashion = Path(os.environ.get("TORCHSLIM_DATA_DIR", DEFAULT_FASHION_DIR))
    if not any((fashion / f).exists() for f in ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte")):
        pytest.skip(f"Fashion-MNIST not found in {fashion}")

    torch.set_num_threads(2)
    data = {"name": "fashion_mnist", "dir": str(fashion), "subset": 2000, "val_size": 400, "batch_size": 64}
    loaders = make_loaders(DataConfig.from_dict(data))
    torch.manual_seed(0)
    model = ts.create_model("lenet5")
    ts.fit(model, loaders.train, ts.TrainConfig(epochs=2, lr=0.05), progress=False)
    out = tmp_path_factory.mktemp("auto")
    cfg = AutoConfig(
        objective="bytes",
        max_drop=1.0,
        filter_ratios=(0.5,),
        rank_fractions=(),
        kmeans_bits=(4,),
        points=2,
        epochs=1,
        steps_per_epoch=3,
        val_images=300,
        batch=16,
    )
    summary = ts.auto(model, data, out, cfg)
    return out, summary, data, cfg, model


def test_search_points_are_what_their_files_measure(small_search):
    """Catches: a front whose numbers are not the files' (bytes, top-1 re-measured from each .slim)."""
    from torchslim.data import DataConfig, make_loaders

    out, summary, data, _, _ = small_search
    test = make_loaders(DataConfig.from_dict(data)).test
    assert summary["points"], "no point was measured"
    for r in summary["points"]:
        path = out / "points" / f"{r['point']}.slim"
        assert r["bytes"] == os.path.getsize(path)
        assert r["top1"] == ts.evaluate(ts.engine(ts.load(path)), test)["top1"]
        assert r["bytes"] < summary["baseline"]["bytes"]
    assert json.loads((out / "front.json").read_text())["points"] == summary["points"]
    assert (out / "front.png").stat().st_size > 0 and "| float |" in (out / "front.md").read_text()


def test_search_best_and_front_follow_their_definitions(small_search):
    """Catches: a best point that is not the cheapest within the drop (or, when none is, not the most
    accurate), and front flags that disagree with the dominance definition."""
    out, summary, _, cfg, _ = small_search
    rows = summary["points"]
    front = pareto(rows, "bytes")
    assert [r["on_front"] for r in rows] == [r in front for r in rows]
    within = [r for r in rows if r["drop"] <= cfg.max_drop]
    best = next(r for r in rows if r["point"] == summary["best"])
    if within:
        assert summary["met"] and best["bytes"] == min(r["bytes"] for r in within)
    else:
        assert not summary["met"] and best["top1"] == max(r["top1"] for r in rows)
    assert (out / "best.slim").read_bytes() == (out / "points" / f"{best['point']}.slim").read_bytes()


def test_search_resumes_without_redoing_and_refuses_other_settings(small_search):
    out, summary, data, cfg, model = small_search
    stamp = {p: p.stat().st_mtime_ns for p in (out / "points").glob("*.slim")}
    again = ts.auto(model, data, out, cfg)
    assert again["points"] == summary["points"]
    assert {p: p.stat().st_mtime_ns for p in (out / "points").glob("*.slim")} == stamp
    import dataclasses

    with pytest.raises(AutoError, match="another model or settings"):
        ts.auto(model, data, out, dataclasses.replace(cfg, max_drop=2.0))


def test_search_recipe_reproduces_its_point(small_search, tmp_path):
    """Catches: a written recipe that is not what built the point (same seed, same tensors)."""
    out, summary, _, _, _ = small_search
    name = summary["points"][0]["point"]
    ts.run_recipe(out / "points" / f"{name}.yaml", tmp_path / "rerun", latency=False)
    from torchslim.export.slim import read_slim

    a, _ = read_slim(out / "points" / f"{name}.slim")
    b, _ = read_slim(tmp_path / "rerun" / "model.slim")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_search_with_nothing_to_gain_says_so(small_search, tmp_path):
    """Catches: a search whose path has no step (here: only weight formats, objective MACs, which they
    do not change) crashing on an empty front instead of naming the cause."""
    import dataclasses

    _, _, data, cfg, model = small_search
    cfg = dataclasses.replace(cfg, objective="macs", filter_ratios=(), rank_fractions=())
    with pytest.raises(AutoError, match="no form of any layer lowers the model's macs"):
        ts.auto(model, data, tmp_path / "none", cfg)


def test_cli_auto_names_what_is_missing_or_wrong(tmp_path, capsys):
    """Catches: a command that starts a search without a trained model, or a stack trace for a bad setting."""
    from torchslim.cli import main

    assert main(["auto", "--out", str(tmp_path / "a")]) == 2
    assert "--from FILE" in capsys.readouterr().err
    slim = str(tmp_path / "m.slim")
    ts.save(ts.create_model("lenet5"), slim)
    assert main(["auto", "--from", slim, "--max-drop", "-1", "--out", str(tmp_path / "a")]) == 2
    assert "max_drop" in capsys.readouterr().err
