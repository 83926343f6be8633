"""prune.slimming / prune.group_lasso / prune.depgraph hooks and sensitivity analysis."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from references import channel_mask_reference
from torchslim.api import method_callbacks
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import count_macs
from torchslim.prune import DepGraph, GroupLasso, Slimming, auto_overrides, sensitivity
from torchslim.prune.regularize import DepGraphPenalty, bn_l1, filter_group_lasso
from torchslim.train import TrainConfig, fit

from contract import MethodContract, _calibrated


class TestSlimmingContract(MethodContract):
    config = Slimming(penalty=1e-4, ratio=0.3)
    bad_configs = (lambda: Slimming(penalty=-1), lambda: Slimming(ratio=1.0))
    model_names = ("vgg_small", "resnet20")
    prepare_rel_error = 0.0  # prepare only adds a training penalty
    reference_rtol = 0.0

    def prepare_reference(self, original, prepared):
        """Network slimming (Liu et al. 2017) and group lasso (Wen et al. 2016) act through the
        training loss only: the prepared model computes exactly the original's function."""
        return copy.deepcopy(original)

    def _models(self):
        """Distinct BatchNorm scales (as after training), so the gamma ranking removes channels."""
        out = super()._models()
        g = torch.Generator().manual_seed(3)
        for _, model in out:
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.05)
        return out

    def convert_reference(self, prepared, converted):
        """Convert removes channels: it must equal the prepared model with those channels masked."""
        return channel_mask_reference(prepared, converted)


class TestGroupLassoContract(TestSlimmingContract):
    config = GroupLasso(penalty=1e-4, ratio=0.3)
    bad_configs = (lambda: GroupLasso(penalty=2), lambda: GroupLasso(ratio=-0.1))


class TestDepGraphContract(TestSlimmingContract):
    config = DepGraph(penalty=1e-3, ratio=0.3)
    bad_configs = (
        lambda: DepGraph(penalty=-1e-3),
        lambda: DepGraph(alpha=-1),
        lambda: DepGraph(ratio=1.0),
        lambda: DepGraph(target_macs=1.0),
        lambda: DepGraph(round_to=0),
    )


@pytest.mark.parametrize("name", ["vgg_small", "resnet20"])
def test_depgraph_gradient_is_the_reference_regularizer(name):
    """The penalty's gradient equals Torch-Pruning's ``GroupNormPruner.regularize`` (the DepGraph
    authors' implementation: grad += reg * gamma_k * w over every coupled slice, gamma_k =
    2**(4 (max s - s_k) / (max s - min s)) from the group norms s_k) on every parameter. Catches a
    group missing its consumers' input slices or BN scales, gamma from I_k instead of its root, and
    residual-coupled convs scored apart."""
    tp = pytest.importorskip("torch_pruning")
    model = _calibrated(name)
    ref = copy.deepcopy(model)
    DepGraphPenalty(model, DepGraph(penalty=1e-3, alpha=4.0)).loss_term(model, None, None, None).backward()
    last = [m for m in ref.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.GroupNormPruner(
            ref,
            torch.zeros(1, 1, 28, 28),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            reg=1e-3,
            ignored_layers=[last],
            global_pruning=True,
        )
    for p in ref.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(ref, alpha=2**4)
    for (pname, ours), (_, theirs) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        got = ours.grad if ours.grad is not None else torch.zeros_like(ours)
        assert torch.allclose(got, theirs.grad, rtol=1e-4, atol=1e-6 * float(theirs.grad.abs().max())), pname
    assert any(float(p.grad.abs().max()) > 0 for p in ref.parameters())


def test_penalty_terms_match_formulas():
    model = _calibrated("vgg_small")
    bn, conv = model[0][1], model[0][0]
    assert torch.isclose(bn_l1(bn), bn.weight.abs().sum())
    w = conv.weight.flatten(1)
    assert torch.isclose(filter_group_lasso(conv), sum(w[i].norm() for i in range(w.shape[0])) * 3.0)


def test_slimming_penalty_shrinks_gamma(fashion_dir):
    loaders = make_loaders(DataConfig(dir=str(fashion_dir), subset=600, val_size=100, batch_size=50))
    runs = {}
    for penalty in (0.0, 0.3):
        torch.manual_seed(0)
        model = ts.create_model("vgg_small", width=8)
        ts.compress_(model, Slimming(penalty=penalty, ratio=0.5))
        fit(model, loaders.train, TrainConfig(epochs=2, lr=0.05), callbacks=method_callbacks(model))
        runs[penalty] = sum(
            float(m.weight.detach().abs().sum()) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
        )
        macs = count_macs(model, (1, 28, 28))
        ts.convert_(model)
        assert count_macs(model, (1, 28, 28)) < 0.6 * macs
    assert runs[0.3] < 0.8 * runs[0.0]


def test_slimming_refuses_model_without_bn():
    with pytest.raises(ValueError, match="BatchNorm2d"):
        ts.compress_(ts.create_model("lenet5"), Slimming())


def test_sensitivity_and_auto_ratios(fashion_dir):
    loaders = make_loaders(DataConfig(dir=str(fashion_dir), subset=1500, val_size=300, batch_size=64))
    model = ts.create_model("lenet300_100")
    fit(model, loaders.train, TrainConfig(epochs=2, optimizer="adam", lr=1e-3))
    rows = sensitivity(model, loaders.val, "prune.magnitude", ratios=(0.5, 0.99), progress=False)
    assert {r["layer"] for r in rows} == {"(none)", "1", "3", "5"}
    by = {(r["layer"], r["ratio"]): r["drop"] for r in rows}
    assert by[("1", 0.99)] > by[("1", 0.5)]  # pruning more hurts more
    ov = auto_overrides(rows, max_drop=1000.0)
    assert ov == {"1": {"sparsity": 0.99}, "3": {"sparsity": 0.99}, "5": {"sparsity": 0.99}}
    assert all(v["sparsity"] in (0.0, 0.5, 0.99) for v in auto_overrides(rows, max_drop=0.5).values())
    frows = sensitivity(_calibrated("vgg_small"), loaders.val, "prune.filters", ratios=(0.5,), progress=False)
    assert "2.3" not in {r["layer"] for r in frows}  # the classifier's outputs are never pruned
