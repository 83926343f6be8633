"""prune.variational_dropout: the local reparameterisation trick, the KL term, removal at convert."""

import copy
import math

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from torchslim.api import method_callbacks
from torchslim.core.select import select
from torchslim.prune import VariationalDropout
from torchslim.prune.variational import PARAM, KLCallback, kl, pruned_fraction
from torchslim.runtime import SparseConv2d, SparseLinear

from contract import MethodContract

THRESHOLD = 0.5  # log alpha; with log sigma^2 = -10 at prepare, weights with |w| < exp(-5.25) are pruned


def _vd_reference(original: nn.Module, config: VariationalDropout) -> nn.Module:
    """The paper's rule at prepare, from the formula: log alpha = log sigma^2 - log w^2 with
    sigma^2 = e^-10, so w is dropped when log(w^2 + 1e-8) <= -10 - threshold."""
    ref = copy.deepcopy(original)
    for _, m, cfg in select(ref, config, (nn.Conv2d, nn.Linear)):
        w = m.weight.data
        w[torch.log(w * w + 1e-8) <= -10.0 - cfg.threshold] = 0.0
    return ref


class TestVariationalDropoutContract(MethodContract):
    config = VariationalDropout(threshold=THRESHOLD, kernel="sparse", overrides={"re:.*fc.*": {"threshold": 0.0}})
    bad_configs = (
        lambda: VariationalDropout(threshold=-1.0),
        lambda: VariationalDropout(threshold=11.0),
        lambda: VariationalDropout(kl_weight=2.0),
        lambda: VariationalDropout(warmup_steps=-1),
        lambda: VariationalDropout(kernel="fast"),
    )
    model_names = ("lenet5", "resnet20")

    def prepare_reference(self, original, prepared):
        ref = _vd_reference(original, self.config)
        changed = sum(
            int((a.weight != b.weight).sum())
            for (_, a, _), (_, b, _) in zip(
                select(original, self.config, (nn.Conv2d, nn.Linear)), select(ref, self.config, (nn.Conv2d, nn.Linear))
            )
        )
        assert changed > 0  # the threshold prunes some random-init weights, so the mask is tested
        return ref


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 3))


def test_training_noise_has_the_local_reparameterisation_variance():
    """Bug caught: noise on the weights' scale instead of op(x^2, sigma^2) (or no noise): the output
    variance over many draws must be sum_i x_i^2 sigma_i^2 (4 standard errors of a variance estimate
    from n draws: sqrt(2 / n))."""
    model = _linear()
    ts.compress_(model, VariationalDropout())
    lin = model[1]
    with torch.no_grad():
        getattr(lin, PARAM).uniform_(-6, -2)
    x = torch.randn(1, 1, 28, 28)
    n = 4000
    model.train()
    with torch.no_grad():
        outs = torch.cat([model(x) for _ in range(n)])
        mu = x.flatten(1) @ lin.weight.T + lin.bias
        var = (x.flatten(1) ** 2) @ getattr(lin, PARAM).exp().T
    assert torch.allclose(outs.mean(0), mu[0], atol=float(4 * (var[0] / n).sqrt().max()))
    rel = (outs.var(0) / var[0] - 1).abs().max().item()
    assert rel < 4 * math.sqrt(2 / n), rel


def test_eval_uses_the_masked_mean_weights():
    """Bug caught: the mask read with the wrong sign of log alpha, or the eval path still noisy."""
    model = _linear()
    ts.compress_(model, VariationalDropout(threshold=3.0))
    lin = model[1]
    with torch.no_grad():
        getattr(lin, PARAM).copy_(torch.log(lin.weight**2 + 1e-8) + 6.0 * torch.rand_like(lin.weight))
    keep = (getattr(lin, PARAM) - torch.log(lin.weight**2 + 1e-8)) < 3.0
    x = torch.randn(5, 1, 28, 28)
    model.eval()
    want = x.flatten(1) @ (lin.weight * keep).T + lin.bias
    assert torch.equal(model(x), model(x))
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    assert round(pruned_fraction(model) * keep.numel()) == int((~keep).sum())


def test_kl_matches_the_paper_approximation():
    """Bug caught: a constant or sign wrong in eq. 14 (-KL = k1 sigmoid(k2 + k3 log a) - 0.5 log(1 + 1/a) - k1)."""
    lin = nn.Linear(4, 1, bias=False)
    la = torch.tensor([-8.0, -1.0, 0.0, 4.0])
    with torch.no_grad():
        lin.weight.copy_(torch.ones(1, 4))
        lin.register_parameter(PARAM, nn.Parameter((la - 0.0).view(1, 4) + math.log(1 + 1e-8)))
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    want = sum(k1 - k1 / (1 + math.exp(-(k2 + k3 * a))) + 0.5 * math.log1p(math.exp(-a)) for a in la.tolist())
    assert abs(kl(lin).item() - want) < 1e-4
    assert kl(lin).item() > 0


def test_kl_alone_drives_weights_out():
    """Bug caught: the KL term with the wrong sign (it would make every weight certain): minimising
    it alone raises the pruned fraction."""
    torch.manual_seed(0)
    model = ts.create_model("lenet300_100")
    cfg = VariationalDropout(kl_weight=1e-3)
    ts.compress_(model, cfg)
    (cb,) = method_callbacks(model)
    opt = torch.optim.Adam(model.parameters(), 0.05)
    before = pruned_fraction(model)
    for step in range(30):
        loss = cb.loss_term(model, None, None, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cb.after_step(model, step)
    assert pruned_fraction(model) > before + 0.3


def test_kl_ramp_and_resume_state():
    """Bug caught: the warm-up ramp not applied, or its step lost on resume (a resumed run would
    restart the ramp at 0)."""
    model = _linear()
    cfg = VariationalDropout(kl_weight=1e-2, warmup_steps=10)
    ts.compress_(model, cfg)
    cb = KLCallback(model, cfg)
    assert cb.loss_term(model, None, None, None) is None  # step 0: weight 0
    for step in range(5):
        cb.after_step(model, step)
    half = cb.loss_term(model, None, None, None)
    resumed = KLCallback(model, cfg)
    resumed.load_state_dict(cb.state_dict())
    torch.testing.assert_close(resumed.loss_term(model, None, None, None), half)
    torch.testing.assert_close(half, 0.5 * 1e-2 * kl(model[1]))


def test_convert_removes_exactly_the_dropped_weights_and_the_parameters():
    model = _linear()
    ts.compress_(model, VariationalDropout(threshold=3.0, kernel="sparse"))
    lin = model[1]
    with torch.no_grad():
        getattr(lin, PARAM).copy_(
            torch.log(lin.weight**2 + 1e-8) + torch.where(torch.rand_like(lin.weight) < 0.8, 4.0, 0.0)
        )
    keep = (getattr(lin, PARAM) - torch.log(lin.weight**2 + 1e-8)) < 3.0
    model.eval()
    x = torch.randn(5, 1, 28, 28)
    want = model(x)
    ts.convert_(model)
    assert isinstance(model[1], SparseLinear) and model[1].nnz == int(keep.sum())
    assert not any(PARAM in k for k in model.state_dict())
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


def test_layers_with_their_own_forward_are_skipped_with_a_warning():
    class Padded(nn.Conv2d):
        def forward(self, x):
            return super().forward(nn.functional.pad(x, (1, 1, 1, 1)))

    model = nn.Sequential(Padded(1, 4, 3), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    with pytest.warns(UserWarning, match="own forward"):
        ts.compress_(model, VariationalDropout(), example_inputs=torch.randn(1, 1, 28, 28))
    assert not hasattr(model[0], PARAM) and hasattr(model[2], PARAM)
    ts.convert_(model.eval())
    assert type(model[0]) is Padded and isinstance(model[2], SparseLinear)


def test_trains_in_fit_and_prunes(fashion_dir):
    """One short epoch on a Fashion-MNIST slice: the KL term prunes LeNet-300-100 while it learns
    (bug caught: the callback not returned, or the KL term left out of fit's loss)."""
    from torchslim.data import DataConfig, make_loaders
    from torchslim.train import TrainConfig, fit

    torch.manual_seed(0)
    loaders = make_loaders(DataConfig(dir=str(fashion_dir), subset=1500, val_size=300, batch_size=64))
    model = ts.create_model("lenet300_100")
    cfg = VariationalDropout(kl_weight=1e-4)
    ts.compress_(model, cfg)
    before = pruned_fraction(model)
    history = fit(
        model, loaders.train, TrainConfig(epochs=1, lr=0.01), callbacks=method_callbacks(model), progress=False
    )
    assert pruned_fraction(model) > before + 0.05
    assert history["epochs"][0]["train_top1"] > 20  # it learns while it prunes (chance: 10 %)
    ts.convert_(model.eval())
    assert all(isinstance(m, (SparseLinear, SparseConv2d)) for m in model.modules() if hasattr(m, "nnz"))
