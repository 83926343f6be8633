"""Recipes (schema, stage runner, resume) and the command line."""

import json

import pytest
import yaml

import torchslim as ts
from torchslim.cli import main
from torchslim.core.fold import FoldBNMethod
from torchslim.recipe import RecipeError, parse_recipe, run_recipe


def _recipe(fashion_dir, **over):
    r = {
        "name": "t",
        "model": {"name": "vgg_small", "kwargs": {"width": 8}},
        "data": {"dir": str(fashion_dir), "subset": 400, "val_size": 80, "batch_size": 40},
        "train": {"epochs": 1, "optimizer": "adam", "lr": 0.002},
        "stages": [
            {"method": "core.fold_bn", "name": "a"},
            {"method": "core.fold_bn", "name": "b", "finetune": {"epochs": 1, "lr": 0.01}},
        ],
        "export": {"latency": False},
    }
    r.update(over)
    return r


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"modle": {}}, r"unknown key\(s\) \['modle'\]"),
        ({"model": {"name": "alexnet"}}, "model.name='alexnet' is unknown"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"train": {"optimizer": "rmsprop"}}, "use 'sgd' or 'adam'"),
        ({"stages": [{"method": "prune.nothing"}]}, "unknown method 'prune.nothing'"),
        ({"stages": [{"method": "core.fold_bn", "sparsity": 0.5}]}, r"stages\[1\].*unknown field"),
        ({"stages": [{"method": "core.fold_bn", "layers": ["re:("]}]}, "bad regex"),
        ({"stages": [{"method": "core.fold_bn", "finetune": {"epochz": 1}}]}, r"stages\[1\].finetune: unknown key"),
        ({"data": {"name": "imagenet"}}, "data.name='imagenet'"),
    ],
)
def test_recipe_errors_name_field_and_fix(fashion_dir, bad, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(_recipe(fashion_dir, **bad))


def test_all_shipped_recipes_parse():
    from pathlib import Path

    for p in sorted(Path(__file__).parents[1].glob("recipes/*.yaml")):
        parse_recipe(p)


def test_interrupted_run_resumes_at_stage_2(fashion_dir, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = FoldBNMethod.convert.__func__

    def crash_second(cls, model, config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # as if Ctrl-C hit during stage 2
        return real(cls, model, config)

    monkeypatch.setattr(FoldBNMethod, "convert", classmethod(crash_second))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(_recipe(fashion_dir), tmp_path)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["done"] == ["baseline", "stage1_a"]
    assert (tmp_path / "ckpt_stage2_b" / "last.ckpt").exists()  # stage 2 fine-tuning was checkpointed
    capsys.readouterr()

    rows = run_recipe(_recipe(fashion_dir), tmp_path)
    err = capsys.readouterr().err
    assert "resuming after step 'stage1_a'" in err
    assert "training vgg_small" not in err  # the baseline was not trained again
    assert [r["step"] for r in rows] == ["baseline", "stage1_a", "stage2_b"]
    assert calls["n"] == 3
    assert {"top1", "bytes", "params", "nonzeros", "macs", "threads"} <= set(rows[-1])
    assert (tmp_path / "model.slim").exists() and (tmp_path / "report.md").exists()
    loaded = ts.load(tmp_path / "model.slim")
    assert not any(type(m).__name__ == "BatchNorm2d" for m in loaded.modules())
    # A different recipe in the same folder is refused rather than mixed.
    with pytest.raises(RecipeError, match="different recipe"):
        run_recipe(_recipe(fashion_dir, train={"epochs": 2}), tmp_path)


def test_finetune_only_stage(fashion_dir, tmp_path):
    r = _recipe(
        fashion_dir,
        model={"name": "lenet300_100"},
        stages=[
            {"method": "prune.magnitude", "sparsity": 0.5, "kernel": "dense"},
            {"name": "recover", "finetune": {"epochs": 1, "lr": 0.01}},
        ],
    )
    rows = run_recipe(r, tmp_path)
    assert [x["method"] for x in rows] == ["float", "prune.magnitude", "finetune"]
    assert rows[2]["nonzeros"] == rows[1]["nonzeros"]  # fine-tuning a packed sparse model keeps its zeros
    with pytest.raises(RecipeError, match="need a 'method'"):
        parse_recipe(_recipe(fashion_dir, stages=[{"finetune": {"epochs": 1}, "sparsity": 0.5}]))


def test_deep_compression_recipe_stages(fashion_dir, tmp_path):
    """prune -> k-means -> Huffman: every stage shrinks the file; the Huffman file decodes."""
    r = _recipe(
        fashion_dir,
        model={"name": "lenet300_100"},
        stages=[
            {
                "method": "prune.magnitude",
                "sparsity": 0.9,
                "kernel": "dense",
                "finetune": {"epochs": 1, "optimizer": "adam", "lr": 0.001},
            },
            {"method": "quant.kmeans", "bits": 4},
        ],
        export={"latency": False, "entropy": "huffman"},
    )
    rows = run_recipe(r, tmp_path)
    assert [x["step"] for x in rows] == ["baseline", "stage1_prune.magnitude", "stage2_quant.kmeans", "export"]
    sizes = [x["bytes"] for x in rows]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] / sizes[-1] > 20
    assert rows[-1]["top1"] == rows[-2]["top1"]  # Huffman is lossless
    assert ts.load(tmp_path / "model.slim").torchslim.header["entropy"]


def test_cli_sensitivity(fashion_dir, tmp_path, capsys):
    r = _recipe(fashion_dir, model={"name": "lenet300_100"}, stages=[])
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    assert (
        main(
            [
                "sensitivity",
                str(tmp_path / "r.yaml"),
                "--out",
                str(tmp_path / "run"),
                "--ratios",
                "0.5,0.9",
                "--max-drop",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "overrides:" in out and "sparsity:" in out
    assert (tmp_path / "run" / "sensitivity" / "sensitivity.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "run" / "sensitivity" / "sensitivity.json").read_text())
    assert len(rows) == 1 + 3 * 2


def test_cli_eval_inspect_list(fashion_dir, tmp_path, capsys):
    r = _recipe(fashion_dir, stages=[], model={"name": "lenet300_100"})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--no-latency"]) == 0
    capsys.readouterr()
    slim = str(tmp_path / "run" / "model.slim")
    assert main(["eval", slim, "--json", "--data-dir", str(fashion_dir)]) == 0
    res = json.loads(capsys.readouterr().out)
    for k in ("top1", "bytes", "params", "nonzeros", "macs", "latency_b1_ms", "latency_b256_ms", "threads"):
        assert k in res
    assert 10 < res["top1"] <= 100 and res["bytes"] == (tmp_path / "run" / "model.slim").stat().st_size
    assert main(["inspect", slim]) == 0
    out = capsys.readouterr().out
    assert "Linear" in out and "235,500" in out
    assert main(["list", "models"]) == 0 and "resnet20" in capsys.readouterr().out
    assert main(["list", "methods"]) == 0 and "core.fold_bn" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    (tmp_path / "bad.slim").write_bytes(b"junk" * 10)
    assert main(["eval", str(tmp_path / "bad.slim")]) == 2
    assert "torchslim: error:" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("model: {name: lenet5}\nstages: [{method: quant.magic}]\n")
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "unknown method 'quant.magic'" in capsys.readouterr().err


def test_recipe_runs_a_user_model_by_import_path_and_the_cli_reads_its_files(fashion_dir, tmp_path, capsys):
    """model: {import: "pkg.module:factory"} trains, compresses, saves and resumes a model outside the
    registry; eval / inspect / export read its files with --model, and only with it."""
    import json

    import torch

    from torchslim.cli import main
    from torchslim.recipe import run_recipe
    from usermodels import SmallNet

    recipe = {
        "name": "own",
        "model": {"import": "usermodels:SmallNet", "kwargs": {"width": 4}},
        "data": {"name": "fashion_mnist", "dir": str(fashion_dir), "subset": 600, "val_size": 100, "batch_size": 100},
        "train": {"epochs": 1, "optimizer": "adam", "lr": 0.001},
        "stages": [
            {"method": "prune.magnitude", "sparsity": 0.8, "kernel": "auto"},
            {"method": "lowrank.tucker", "selection": "fixed", "rank": 0.5, "prefer": "size"},
        ],
        "export": {"latency": False, "entropy": "huffman"},
    }
    rows = run_recipe(recipe, tmp_path / "run")
    assert [r["model"] for r in rows] == ["usermodels:SmallNet"] * 4
    again = run_recipe(recipe, tmp_path / "run")  # resumes: every step reloads onto a fresh instance
    assert [r["top1"] for r in again] == [r["top1"] for r in rows]
    path = str(tmp_path / "run" / "model.slim")
    assert main(["eval", path, "--no-latency", "--json"]) == 2  # no factory: a clear error
    assert "outside the registry" in capsys.readouterr().err
    # the factory comes from the flag; its arguments from the recipe in the file's header (data, not code)
    assert main(["eval", path, "--no-latency", "--json", "--model", "usermodels:SmallNet"]) == 0
    res = json.loads(capsys.readouterr().out)  # eval always uses the full test split
    assert (res["bytes"], res["params"], res["macs"]) == (rows[-1]["bytes"], rows[-1]["params"], rows[-1]["macs"])
    assert main(["inspect", path, "--model", "usermodels:SmallNet"]) == 0
    capsys.readouterr()
    assert main(["export", path, "-o", str(tmp_path / "own.onnx"), "--model", "usermodels:SmallNet"]) == 0
    model = ts.load(path, model=SmallNet(width=4))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(ts.load(path, model=SmallNet(width=4))(x), model(x))
    assert json.loads((tmp_path / "run" / "report.json").read_text())[-1]["step"] == "export"


def test_user_model_fine_tunes_distilled_from_its_original(fashion_dir, tmp_path):
    """Catches: ``distill: {teacher: original}`` on a user's model loading the run's baseline file
    without the model's factory (SlimFileError 'outside the registry'; found by torchslim auto on
    timm's resnet18)."""
    from torchslim.recipe import run_recipe

    recipe = {
        "name": "own_kd",
        "model": {"import": "usermodels:SmallNet", "kwargs": {"width": 4}},
        "data": {"name": "fashion_mnist", "dir": str(fashion_dir), "subset": 600, "val_size": 100, "batch_size": 100},
        "train": {"epochs": 1, "optimizer": "adam", "lr": 0.001},
        "stages": [{"finetune": {"epochs": 1, "steps_per_epoch": 2, "distill": {"teacher": "original"}}}],
        "export": {"latency": False},
    }
    rows = run_recipe(recipe, tmp_path / "run")
    assert [r["step"] for r in rows] == ["baseline", "stage1_finetune"]


def test_recipe_user_model_errors_name_the_field(tmp_path):
    from torchslim.recipe import RecipeError, parse_recipe

    base = {"name": "x", "data": {"name": "fashion_mnist"}}
    for model, match in (
        ({"import": "usermodels:Nope"}, "has no callable 'Nope'"),
        ({"import": "no_such_pkg:f"}, "cannot import 'no_such_pkg'"),
        ({"import": "usermodels.SmallNet"}, "package.module:factory"),
        ({"import": "usermodels:SmallNet", "name": "lenet5"}, "do not combine"),
        ({"import": "usermodels:SmallNet", "weights": "missing.pt"}, "model.weights: no file"),
        ({"name": "lenet5", "weights": "w.pt"}, "goes with model.import"),
    ):
        with pytest.raises(RecipeError, match=match):
            parse_recipe({**base, "model": model})


def test_two_fresh_runs_of_a_recipe_that_trains_its_baseline_are_identical(fashion_dir, tmp_path):
    """Catches: the model built before the seed is set (two runs started from different weights)."""
    import torch

    recipe = {
        "name": "same",
        "model": {"name": "lenet300_100"},
        "data": {"name": "fashion_mnist", "dir": str(fashion_dir), "subset": 600, "val_size": 100, "batch_size": 100},
        "train": {"epochs": 1, "optimizer": "adam", "lr": 0.001, "seed": 3},
        "stages": [{"method": "prune.magnitude", "sparsity": 0.5, "kernel": "dense"}],
        "export": {"latency": False},
    }
    torch.manual_seed(123)  # whatever ran before must not matter
    a = run_recipe(recipe, tmp_path / "a")
    torch.manual_seed(456)
    b = run_recipe(recipe, tmp_path / "b")
    assert [r["top1"] for r in a] == [r["top1"] for r in b]
    wa, wb = ts.load(tmp_path / "a" / "model.slim"), ts.load(tmp_path / "b" / "model.slim")
    assert all(torch.equal(x, y) for x, y in zip(wa.state_dict().values(), wb.state_dict().values()))


def _tiny(fashion_dir, name="tiny"):
    return {
        "name": name,
        "model": {"name": "lenet300_100"},
        "data": {"name": "fashion_mnist", "dir": str(fashion_dir), "subset": 300, "val_size": 0, "batch_size": 100},
        "train": {"epochs": 0},
        "export": {"latency": False},
    }


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "-x", "a b"])
def test_run_name_must_be_one_safe_folder_name(name):
    """Catches: name '..' with --restart deleting the current folder, '.' every run under runs/."""
    with pytest.raises(RecipeError, match="must be one folder name"):
        parse_recipe({"name": name, "model": {"name": "lenet5"}, "data": {"name": "fashion_mnist"}})


def test_restart_removes_only_what_the_run_wrote(fashion_dir, tmp_path):
    """Catches: a restart or a resume deleting the user's files in the run folder (``notes.tmp`` was
    deleted by the ``*.tmp`` clean-up) or anything outside it."""
    out = tmp_path / "shared"
    run_recipe(_tiny(fashion_dir), out)
    assert (out / "model.slim").exists() and (out / "00_baseline.slim").exists()
    (out / "notes.txt").write_text("mine")
    (out / "notes.tmp").write_text("mine too")
    (out / "other_run").mkdir()
    (out / "other_run" / "model.slim").write_text("not yours")
    (out / ".model.slim.abcd1234.torchslim-tmp").write_text("a killed write")
    run_recipe(_tiny(fashion_dir), out, restart=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "notes.tmp").read_text() == "mine too"
    assert (out / "other_run" / "model.slim").read_text() == "not yours"
    assert not (out / ".model.slim.abcd1234.torchslim-tmp").exists() and (out / "model.slim").exists()


def test_run_folder_rules(fashion_dir, tmp_path, monkeypatch):
    """Catches: ``--out`` into a user's non-empty folder (the run's clean-up then works among their
    files), a ``ckpt_*`` symlink making resume / ``--restart`` delete files in the folder it points
    to, and a read-only folder ending in a raw OSError traceback."""
    import os

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(RecipeError, match="not empty and holds no torchslim run"):
        run_recipe(_tiny(fashion_dir), foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".last.ckpt.abcd1234.torchslim-tmp").write_text("not the run's")
    run = tmp_path / "linked"
    run_recipe(_tiny(fashion_dir), run)
    (run / "ckpt_x").symlink_to(elsewhere)
    with pytest.raises(RecipeError, match="symbolic links"):
        run_recipe(_tiny(fashion_dir), run, restart=True)
    assert (elsewhere / ".last.ckpt.abcd1234.torchslim-tmp").exists()

    import errno

    import torchslim._files as files

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(files, "atomic_write", full)
    with pytest.raises(RecipeError, match=r"full.*recipe.yaml: No space left on device"):
        run_recipe(_tiny(fashion_dir), tmp_path / "full")
    monkeypatch.undo()

    if os.geteuid() != 0:  # root writes into read-only folders
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(RecipeError, match="locked"):
                run_recipe(_tiny(fashion_dir), locked)
        finally:
            locked.chmod(0o700)


def test_a_second_run_into_the_same_folder_is_refused(fashion_dir, tmp_path):
    import fcntl
    import os

    out = tmp_path / "busy"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds the folder
    try:
        with pytest.raises(RecipeError, match="in use by another torchslim run"):
            run_recipe(_tiny(fashion_dir), out)
    finally:
        os.close(fd)
    run_recipe(_tiny(fashion_dir), out)  # released: runs


def test_the_data_order_follows_the_recipe_seed(fashion_dir, tmp_path, monkeypatch):
    """Catches: the data loaders seeded with 0 instead of the recipe's seed (every seed then trains
    on the same batch order; the model's init still follows the seed, so outputs alone differ)."""
    import torchslim.data as data

    seen, real = [], data.make_loaders

    def spy(cfg, **kw):
        seen.append(kw.get("seed"))
        return real(cfg, **kw)

    monkeypatch.setattr(data, "make_loaders", spy)
    recipe = _tiny(fashion_dir)
    recipe["train"]["seed"] = 7
    run_recipe(recipe, tmp_path / "seeded")
    assert seen == [7]


def test_two_runs_lock_each_other_out(tmp_path):
    """Catches: the run lock taken shared (two runs both get a shared lock; the test above plays the
    other run with an exclusive lock, which a shared one still conflicts with)."""
    from torchslim.recipe import _RunLock

    with _RunLock(tmp_path):
        with pytest.raises(RecipeError, match="in use by another torchslim run"):
            _RunLock(tmp_path).__enter__()
    with _RunLock(tmp_path):  # released on exit
        pass


def test_a_broken_state_file_is_a_clear_error(fashion_dir, tmp_path):
    out = tmp_path / "broken"
    run_recipe(_tiny(fashion_dir), out)
    (out / "state.json").write_text("")
    with pytest.raises(RecipeError, match="state.json is not valid JSON; pass --restart"):
        run_recipe(_tiny(fashion_dir), out)
    run_recipe(_tiny(fashion_dir), out, restart=True)


@pytest.mark.parametrize(
    "field, value",
    [
        ("label_smoothing", "0.1"),
        ("momentum", "0.9"),
        ("seed", "0"),
        ("seed", __import__("datetime").date(2024, 1, 1)),
        ("epochs", True),
        ("weight_decay", -1e-4),
        ("lr", float("nan")),
    ],
)
def test_train_fields_of_the_wrong_type_name_the_field(field, value):
    """Catches: raw TypeError / RuntimeError tracebacks, ``epochs: true`` taken as one epoch."""
    with pytest.raises(RecipeError, match=f"train.{field}="):
        parse_recipe(
            {"name": "x", "model": {"name": "lenet5"}, "data": {"name": "fashion_mnist"}, "train": {field: value}}
        )


def test_yaml_alias_bomb_is_refused(tmp_path):
    """A 1 KB recipe with 9^9 aliases under model.kwargs would exhaust memory in Recipe.digest()."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "\n".join(lines) + "\nname: bomb\nmodel: {name: lenet5, kwargs: {k: *a8}}\ndata: {name: fashion_mnist}\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    assert len(text) < 1200
    with pytest.raises(RecipeError, match="expands to more than"):
        parse_recipe(path)


def test_labels_outside_the_classes_are_a_data_error(tmp_path):
    import gzip
    import shutil

    import numpy as np

    from torchslim.data import DataConfig, DataError, load_split

    src = pytest.importorskip("conftest").FASHION
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    name = next(p for p in tmp_path.iterdir() if p.name.startswith("t10k-labels"))
    raw = gzip.decompress(name.read_bytes()) if name.suffix == ".gz" else name.read_bytes()
    arr = np.frombuffer(raw, dtype=np.uint8).copy()
    arr[8 + 5] = 200  # one test label beyond the 10 classes
    name.write_bytes(gzip.compress(arr.tobytes()) if name.suffix == ".gz" else arr.tobytes())
    with pytest.raises(DataError, match="test labels hold 200"):
        load_split(DataConfig(dir=str(tmp_path)), "test")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_split(DataConfig(dir=str(name)), "test")


def test_a_run_killed_mid_stage_and_resumed_equals_an_uninterrupted_one(fashion_dir, tmp_path, monkeypatch):
    """Same seed, same result, through a crash: killed in the second fine-tuning epoch of stage 1,
    the rerun resumes from the epoch checkpoint and ends with the uninterrupted run's numbers and
    weights, bit for bit."""
    import torch

    from torchslim.prune.magnitude import MaskCallback

    recipe = {
        "name": "kill",
        "model": {"name": "lenet300_100"},
        "data": {"name": "fashion_mnist", "dir": str(fashion_dir), "subset": 400, "val_size": 0, "batch_size": 100},
        "train": {"epochs": 1, "optimizer": "adam", "lr": 0.001, "seed": 1},
        "stages": [
            {
                "method": "prune.magnitude",
                "sparsity": 0.7,
                "schedule": "agp",
                "n_steps": 3,
                "frequency": 2,
                "kernel": "dense",
                "finetune": {"epochs": 2, "optimizer": "adam", "lr": 0.0005},
            }
        ],
        "export": {"latency": False},
    }
    straight = run_recipe(recipe, tmp_path / "a")
    real = MaskCallback.after_step

    def killed(self, model, step):
        if step == 5:  # epoch 2 of the stage (4 steps per epoch)
            raise KeyboardInterrupt
        return real(self, model, step)

    monkeypatch.setattr(MaskCallback, "after_step", killed)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path / "b")
    monkeypatch.setattr(MaskCallback, "after_step", real)
    resumed = run_recipe(recipe, tmp_path / "b")
    assert [r["top1"] for r in resumed] == [r["top1"] for r in straight]
    wa, wb = ts.load(tmp_path / "a" / "model.slim"), ts.load(tmp_path / "b" / "model.slim")
    assert all(torch.equal(x, y) for x, y in zip(wa.state_dict().values(), wb.state_dict().values()))
