"""Every registered method on every foreign architecture of tests/zoo.py, as a user would run it:
``compress_(model, config, example_inputs=x)`` -> ``convert_`` -> ``save`` -> ``load(path, model=Fresh())``.
Each pair either works (converted == prepared to float rounding, loaded == converted bit for
bit), skips the layers it cannot handle with one warning naming them, or refuses with a clear
ValueError; never a silently different model."""

import warnings

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.binary import BNN, BWN, XNOR, BinaryConnect, KBit
from torchslim.core.inputs import call
from torchslim.lowrank import CP, SVD, Auto, Spatial, Tucker
from torchslim.prune import DepGraph, Filters, GroupLasso, Magnitude, Slimming, VariationalDropout
from torchslim.quant import PQ, QCNN, KMeans, Uniform

from zoo import INPUT, ZOO, build, sample

CONFIGS = {  # fast settings: no kernel timing (kernel="dense", prefer="size")
    "core.fold_bn": ts.FoldBN(),
    "prune.magnitude": Magnitude(sparsity=0.5, kernel="dense"),
    "prune.filters": Filters(ratio=0.3),
    "prune.slimming": Slimming(ratio=0.3),
    "prune.group_lasso": GroupLasso(ratio=0.3),
    "prune.depgraph": DepGraph(ratio=0.3),
    "prune.variational_dropout": VariationalDropout(kernel="dense"),
    "quant.kmeans": KMeans(bits=4),
    "quant.pq": PQ(sub_dim=4, bits=4, kernel="dense"),
    "quant.qcnn": QCNN(sub_dim=4, bits=4, kernel="dense"),
    "quant.uniform": Uniform(bits=8, act_bits=8),
    "lowrank.svd": SVD(selection="fixed", rank=0.5, prefer="size"),
    "lowrank.tucker": Tucker(selection="fixed", rank=0.5, prefer="size"),
    "lowrank.cp": CP(selection="fixed", rank=4, prefer="size"),
    "lowrank.spatial": Spatial(selection="fixed", rank=0.5, prefer="size"),
    "lowrank.auto": Auto(selection="fixed", rank=0.5, prefer="size"),
    "binary.connect": BinaryConnect(),
    "binary.bwn": BWN(),
    "binary.bnn": BNN(),
    "binary.xnor": XNOR(),
    "binary.kbit": KBit(),
}
# convert changes the function by design (channels the penalty shrank are removed, not masked
# first); the contract suite checks them against the masked model
REMOVES_CHANNELS = {"prune.slimming", "prune.group_lasso", "prune.depgraph"}
REFUSES = {
    ("prune.slimming", "inception_like"): "needs BatchNorm2d",  # no BatchNorm to penalize
    ("prune.slimming", "functional"): "needs BatchNorm2d",
}


def test_every_registered_method_has_a_zoo_config():
    assert set(CONFIGS) == set(ts.list_methods())


def _outputs(model, x):
    with torch.no_grad():
        out = call(model, x)
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_method_on_foreign_model(method, name, tmp_path):
    g = torch.Generator().manual_seed(5)
    x = sample(name, 4, g)
    data = [(sample(name, 16, g), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    model = build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if (method, name) in REFUSES:
            with pytest.raises(ValueError, match=REFUSES[method, name]):
                ts.compress_(model, CONFIGS[method], data=data, example_inputs=x)
            return
        ts.compress_(model, CONFIGS[method], data=data, example_inputs=x)
        prepared = _outputs(model.eval(), x)
        ts.convert_(model)
        converted = _outputs(model.eval(), x)
        ts.save(model, tmp_path / "m.slim")
        loaded = ts.load(tmp_path / "m.slim", model=ZOO[name]())
    for p, c, ld in zip(prepared, converted, _outputs(loaded, x)):
        assert torch.equal(ld, c), "the reloaded model differs"
        if method not in REMOVES_CHANNELS:
            rel = float((c - p).norm() / p.norm())
            assert rel <= 1e-5, f"converted differs from prepared by {rel:.2e}"


@pytest.mark.parametrize("config", [BWN(), XNOR()])
def test_binary_keeps_grouped_and_depthwise_convs_float_with_one_warning(config):
    """Catches: grouped convs packed by a kernel without groups (silently wrong outputs)."""
    for name, grouped in (("resnext_like", "block.3"), ("mobilenetv3_like", "dw.0")):
        model = build(name)
        with pytest.warns(UserWarning, match="keeping .* in float: grouped / depthwise") as rec:
            ts.compress_(model, config, example_inputs=torch.randn(2, *INPUT))
        assert sum("grouped / depthwise" in str(w.message) for w in rec) == 1
        assert grouped in str(next(w.message for w in rec if "grouped" in str(w.message)))
        ts.convert_(model)
        assert type(model.get_submodule(grouped)) is nn.Conv2d


def test_functional_relu_before_a_binary_layer_is_reported():
    """XNOR: a ReLU written as ``F.relu``/``Tensor.relu`` cannot be removed from the user's forward;
    prepare must say which binary layers then always see +1."""
    with pytest.warns(UserWarning, match="function calls in forward") as rec:
        ts.compress_(build("functional"), XNOR(), example_inputs=torch.randn(2, *INPUT))
    msg = next(str(w.message) for w in rec if "function calls" in str(w.message))
    assert "'c'" in msg and "'d'" in msg  # conv c (after cat of relus) and d (after F.relu)


def test_two_output_model_trains_evaluates_and_distills():
    """fit / evaluate / Distill take the logits by an ``output`` selector (default: the first)."""
    from torch.utils.data import DataLoader, TensorDataset

    from torchslim.distill import Distill
    from torchslim.measure import evaluate
    from torchslim.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    data = DataLoader(
        TensorDataset(torch.randn(32, *INPUT, generator=g), torch.randint(0, 10, (32,), generator=g)), batch_size=16
    )
    model = build("two_head")
    by_index = fit(model, data, TrainConfig(epochs=1, lr=0.01, seed=0), progress=False)
    twin = build("two_head")
    by_function = fit(twin, data, TrainConfig(epochs=1, lr=0.01, seed=0, output=lambda out: out[0]), progress=False)
    assert by_index["epochs"][0]["train_loss"] == by_function["epochs"][0]["train_loss"]
    res = evaluate(model, data)
    assert res["top1"] == evaluate(model, data, output=lambda out: out[0])["top1"]
    with pytest.raises(ValueError, match="does not select its logits"):
        evaluate(model, data, output=5)
    student = build("two_head")
    fit(student, data, TrainConfig(epochs=1, lr=0.01, seed=0), callbacks=[Distill(model)], progress=False)


def test_multi_input_model_records_its_input_shapes(tmp_path):
    """A tuple ``example_inputs`` is remembered and saved as one shape per input, so that load's
    check forward, MAC counting and export run the model with all its inputs. Catches: only the
    first input recorded (load fails: forward() missing an argument), the tuple flattened."""
    from torchslim.core.inputs import from_shape
    from torchslim.export.slim import input_shape
    from torchslim.measure import count_macs

    g = torch.Generator().manual_seed(0)
    x = sample("two_input", 4, g)
    model = build("two_input")
    ts.convert_(ts.compress_(model, Magnitude(sparsity=0.5, kernel="sparse"), example_inputs=x))
    ts.save(model, tmp_path / "m.slim")
    loaded = ts.load(tmp_path / "m.slim", model=ZOO["two_input"]())
    shape = input_shape(loaded.torchslim.header)
    assert shape == (INPUT, (x[1].shape[1],))
    assert [t.shape for t in from_shape(shape, 3)] == [(3, *INPUT), (3, x[1].shape[1])]
    fc_macs = 48 * 10 + 6 * 16  # the two Linear layers
    conv_macs = 16 * 3 * 9 * 16 * 16 + 32 * 16 * 9 * 8 * 8
    assert count_macs(loaded, shape) == conv_macs + fc_macs
    with pytest.raises(ValueError, match="tuple of tensors"):
        ts.compress_(build("two_input"), Magnitude(sparsity=0.5), example_inputs=(x[0], "meta"))


def test_multi_input_model_trains_with_cached_teacher_logits():
    """Distill's offline logit cache keys a sample by all of its inputs. Catches: keys from the first
    input only (two samples with the same image and different side inputs share the teacher's
    logits), a teacher called with a tuple it cannot take."""
    from torch.utils.data import DataLoader, TensorDataset

    from torchslim.distill import Distill
    from torchslim.train import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    image, meta = sample("two_input", 16, g)
    image = torch.cat([image, image])  # the same images twice, each time with other side inputs
    meta = torch.cat([meta, torch.randn(16, meta.shape[1], generator=g)])
    data = DataLoader(TensorDataset(image, meta, torch.randint(0, 10, (32,), generator=g)), batch_size=8)
    data = [((x, m), y) for x, m, y in data]
    teacher = build("two_input")
    runs = []
    for cache in (None, {}):
        student = build("two_input")
        h = fit(
            student,
            data,
            TrainConfig(epochs=2, lr=0.01, seed=0),
            callbacks=[Distill(teacher, cache=cache)],
            progress=False,
        )
        runs.append([e["train_loss"] for e in h["epochs"]])
        if cache is not None:
            assert len(cache) == 32
    assert runs[0] == runs[1]
