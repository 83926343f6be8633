"""core.fold_bn through the contract suite, plus its own invariants."""

import copy

import torch

import torchslim as ts
from torchslim.core.fold import FoldBN, conv_bn_pairs

from contract import MethodContract, _calibrated


class TestFoldBNContract(MethodContract):
    config = FoldBN()
    bad_configs = (
        lambda: FoldBN(layers=("re:(",)),
        lambda: FoldBN(overrides={"x": {"nope": 1}}),
        lambda: FoldBN(exclude=(3,)),
    )
    model_names = ("vgg_small", "resnet20", "mobilenetv2", "shufflenetv2")
    prepare_rel_error = 0.0  # prepare is the identity

    def prepare_reference(self, original, prepared):
        return copy.deepcopy(original)  # prepare only marks the pairs; folding happens at convert


def test_fold_removes_every_batchnorm_after_conv():
    model = _calibrated("resnet20")
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert len(conv_bn_pairs(model)) == n_bn  # every BN in resnet20 follows a conv
    ts.convert_(ts.compress_(model, FoldBN()))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_fold_respects_exclude():
    model = _calibrated("vgg_small")
    ts.convert_(ts.compress_(model, FoldBN(exclude=("0.1",))))
    assert isinstance(model[0][1], torch.nn.BatchNorm2d)
    assert isinstance(model[0][4], torch.nn.Identity)


def test_fold_unknown_layer_name_is_an_error():
    import pytest

    model = _calibrated("vgg_small")
    with pytest.raises(ValueError, match="no module named"):
        ts.compress_(model, FoldBN(layers=("features.99",)))


def test_fold_bn_after_a_packed_layer_of_an_earlier_method():
    """Catches: a graph walker that enters a packed runtime layer (k-means codes) and fails to trace,
    which left every BatchNorm unfolded after k-means (core.fold_bn warned and folded nothing)."""
    import warnings

    from torchslim.quant import KMeans

    torch.manual_seed(0)
    model = ts.create_model("vgg_small").eval()
    ts.convert_(ts.compress_(model, KMeans(bits=4, layers=("0.0",))))
    x = torch.randn(2, 1, 28, 28)
    ref = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ts.convert_(ts.compress_(model, ts.FoldBN()))
    # every BatchNorm folded but the one after the k-means conv (fold_bn folds into Conv2d / Linear)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 1
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-4)
