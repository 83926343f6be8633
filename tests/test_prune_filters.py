"""prune.filters: physical channel removal that follows coupling through residual,
depthwise, flatten and (branch-internal) shuffle blocks."""

import warnings

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from references import filters_chain_reference
from torchslim.measure import count_macs, count_params
from torchslim.prune import Filters

from contract import MethodContract, _calibrated


class TestFiltersContract(MethodContract):
    config = Filters(ratio=0.3)
    bad_configs = (
        lambda: Filters(ratio=1.0),
        lambda: Filters(criterion="taylor"),
        lambda: Filters(target_macs=1.5),
        lambda: Filters(round_to=0),
        lambda: Filters(scope="net"),
    )
    model_names = ("vgg_small", "resnet20")
    prepare_rel_error = 2.0  # removing 30 % of random filters changes outputs a lot; bounded and finite

    def prepare_reference(self, original, prepared):
        return filters_chain_reference(original, self.config.ratio)  # vgg_small; None for resnet20


X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name, kwargs",
    [("vgg_small", {}), ("resnet20", {}), ("mobilenetv2", {"width_mult": 0.5}), ("shufflenetv2", {"width_mult": 0.5})],
)
def test_physical_removal_equals_masked_model(name, kwargs, tmp_path):
    """Masked model (prepare) == physically smaller model (convert); the file rebuilds it."""
    torch.manual_seed(0)
    model = ts.create_model(name, **kwargs)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 1, 28, 28))
    model.eval()
    macs = count_macs(model, (1, 28, 28))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts.compress_(model, Filters(ratio=0.5))
        masked = model(X)
        ts.convert_(model)
    torch.testing.assert_close(model(X), masked, atol=1e-5, rtol=1e-4)
    assert count_macs(model, (1, 28, 28)) < 0.8 * macs
    ts.save(model, tmp_path / "p.slim")
    loaded = ts.load(tmp_path / "p.slim")
    assert count_params(loaded) == count_params(model)
    assert torch.equal(loaded(X), model(X))


def test_residual_channels_stay_consistent():
    """Convs joined by a residual add keep equal channel counts after pruning."""
    model = _calibrated("resnet20")
    ts.compress_(model, Filters(ratio=0.5))
    ts.convert_(model)
    for stage in (model.layer1, model.layer2, model.layer3):
        widths = {b.conv2.out_channels for b in stage}
        widths |= {b.shortcut[0].out_channels for b in stage if len(b.shortcut)}
        assert len(widths) == 1
        for b in stage:
            assert b.bn2.num_features == b.conv2.out_channels and b.bn1.num_features == b.conv1.out_channels
            assert b.conv2.in_channels == b.conv1.out_channels
    assert model.conv1.out_channels == model.layer1[0].conv1.in_channels
    assert model.fc.in_features == model.layer3[-1].conv2.out_channels and model.fc.out_features == 10


def test_depthwise_ties_in_and_out():
    model = ts.create_model("mobilenetv2", width_mult=0.5).eval()
    ts.compress_(model, Filters(ratio=0.5))
    ts.convert_(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels


def test_flatten_into_linear_and_classifier_kept():
    model = _calibrated("vgg_small")
    ts.compress_(model, Filters(ratio=0.5))
    ts.convert_(model)
    last_conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    assert model[2][0].in_features == last_conv.out_channels * 3 * 3
    assert model[2][-1].out_features == 10


def test_masked_channels_stay_zero_during_training():
    model = _calibrated("vgg_small").train()
    ts.compress_(model, Filters(ratio=0.5))
    conv = model[0][0]
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        loss = model(torch.randn(8, 1, 28, 28)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dead = conv.parametrizations.weight[0].mask == 0
    assert dead.sum() == 16 and (conv.weight[dead] == 0).all()


def test_per_layer_override_and_exclude():
    model = _calibrated("vgg_small")
    ts.compress_(model, Filters(ratio=0.5, exclude=("0.0",), overrides={"0.3": {"ratio": 0.25}}))
    ts.convert_(model)
    assert model[0][0].out_channels == 32 and model[0][3].out_channels == 24
    assert model[0][7].out_channels == 32


def test_target_macs_budget_within_5_percent():
    model = _calibrated("resnet20")
    base = count_macs(model, (1, 28, 28))
    ts.compress_(model, Filters(target_macs=0.5))
    ts.convert_(model)
    frac = count_macs(model, (1, 28, 28)) / base
    assert 0.45 <= frac <= 0.5


def test_bn_gamma_criterion_removes_smallest_gamma():
    model = _calibrated("vgg_small")
    with torch.no_grad():
        g = model[0][1].weight
        g.copy_(torch.linspace(1.0, 2.0, g.numel()))
        g[[3, 7]] = 1e-4
    ts.compress_(model, Filters(ratio=2 / 32, criterion="bn_gamma", layers=("0.0",)))
    mask = model[0][0].parametrizations.weight[0].mask
    assert (mask == 0).nonzero().flatten().tolist() == [3, 7]
