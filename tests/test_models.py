"""Every registry model builds and forwards on 1x28x28 and 3x32x32 inputs."""

import pytest
import torch

import torchslim as ts
from torchslim.measure import count_macs, count_params


@pytest.mark.parametrize("name", ts.list_models())
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_forward_both_shapes(name, shape):
    c, s = shape
    model = ts.create_model(name, num_classes=7, in_channels=c, input_size=s).eval()
    out = model(torch.randn(2, c, s, s))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_lenet5_matches_han_et_al():
    """Caffe LeNet-5: 431K parameters; MACs 24*24*20*25 + 8*8*50*20*25 + 800*500 + 500*10."""
    m = ts.create_model("lenet5")
    assert count_params(m) == 431_080
    assert count_macs(m, (1, 28, 28)) == 288_000 + 1_600_000 + 400_000 + 5_000


def test_lenet300_100_size():
    assert count_params(ts.create_model("lenet300_100")) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10


def test_unknown_model_and_kwarg():
    with pytest.raises(ValueError, match="known models"):
        ts.create_model("alexnet")
    with pytest.raises(ValueError, match="takes no argument"):
        ts.create_model("lenet5", width=3)


def test_register_model_decorator():
    from torchslim.models import register_model
    from torchslim.models.registry import _MODELS

    @register_model
    def _tiny_test_net(num_classes=10, in_channels=1, input_size=28):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * input_size**2, num_classes))

    try:
        assert "_tiny_test_net" in ts.list_models()
        assert ts.create_model("_tiny_test_net", num_classes=3)(torch.zeros(1, 1, 28, 28)).shape == (1, 3)
    finally:
        _MODELS.pop("_tiny_test_net")


def test_width_multipliers():
    small = count_params(ts.create_model("mobilenetv2", width_mult=0.5))
    big = count_params(ts.create_model("mobilenetv2", width_mult=1.0))
    assert small < big
    with pytest.raises(ValueError, match="width_mult"):
        ts.create_model("shufflenetv2", width_mult=0.3)
