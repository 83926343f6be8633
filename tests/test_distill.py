"""Knowledge distillation: losses against hand-computed values, the callback in fit, recipes."""

import copy
import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.distill import Distill, kd_loss, logit_matching_loss, soft_cross_entropy, standardize_logits
from torchslim.measure import evaluate
from torchslim.recipe import RecipeError, parse_recipe, run_recipe
from torchslim.train import Callback, TrainConfig, fit


def test_kd_loss_hand_computed():
    s, t, T = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), 2.0
    ps = [math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)]
    pt = [1 / (1 + math.e), math.e / (1 + math.e)]
    kl = sum(p * math.log(p / q) for p, q in zip(pt, ps))
    assert kd_loss(s, t, T).item() == pytest.approx(T * T * kl, rel=1e-5)
    assert logit_matching_loss(s, t).item() == pytest.approx(0.5 * (1 + 4))


def test_T1_reduces_to_soft_cross_entropy():
    torch.manual_seed(0)
    s, t = torch.randn(8, 10, requires_grad=True), torch.randn(8, 10)
    entropy = -(F.softmax(t, 1) * F.log_softmax(t, 1)).sum(1).mean()
    torch.testing.assert_close(kd_loss(s, t, 1.0), soft_cross_entropy(s, t, 1.0) - entropy)
    (g1,) = torch.autograd.grad(kd_loss(s, t, 1.0), s)
    (g2,) = torch.autograd.grad(soft_cross_entropy(s, t, 1.0), s)
    torch.testing.assert_close(g1, g2)
    hard = F.one_hot(torch.arange(8) % 10, 10).float() * 50  # a one-hot teacher: plain cross-entropy
    torch.testing.assert_close(
        soft_cross_entropy(s, hard), F.cross_entropy(s, torch.arange(8) % 10), atol=1e-4, rtol=1e-4
    )


def test_T_squared_keeps_gradient_scale():
    torch.manual_seed(0)
    s, t = torch.randn(16, 10, requires_grad=True), torch.randn(16, 10)
    norms = [torch.autograd.grad(kd_loss(s, t, T), s)[0].norm().item() for T in (10.0, 20.0)]
    assert norms[1] == pytest.approx(norms[0], rel=0.1)  # with T^2: about equal
    raw = [n / T**2 for n, T in zip(norms, (10.0, 20.0))]
    assert raw[0] / raw[1] == pytest.approx(4.0, rel=0.1)  # without: 1 / T^2


def test_logit_standardization_matches_relations_not_magnitude():
    """Sun et al. 2024: with ``standardize`` the loss is KD on per-sample z-scores, so a teacher whose
    logits are scaled and shifted per sample (same relations) gives the same loss; catches a
    callback that standardizes one side only, or not at all."""
    torch.testing.assert_close(standardize_logits(torch.tensor([[3.0, 1.0]])), torch.tensor([[1.0, -1.0]]))
    torch.manual_seed(0)
    s, t, x, y = torch.randn(8, 10), torch.randn(8, 10), torch.randn(8, 4), torch.randint(0, 10, (8,))
    scale, shift = torch.rand(8, 1) * 5 + 0.5, torch.randn(8, 1) * 3

    class Fixed(nn.Module):  # a teacher returning given logits
        def __init__(self, z):
            super().__init__()
            self.z = z

        def forward(self, inp):
            return self.z

    losses = []
    for teacher_logits in (t, t * scale + shift):
        cb = Distill(Fixed(teacher_logits), T=2.0, alpha=0.7, standardize=True)
        losses.append(cb.loss_term(nn.Identity(), x, s * 4, y))
    expected = 0.7 * kd_loss(standardize_logits(s), standardize_logits(t), 2.0)
    torch.testing.assert_close(losses[0], expected)
    torch.testing.assert_close(losses[1], expected)
    plain = Distill(Fixed(t), T=2.0, alpha=0.7).loss_term(nn.Identity(), x, s * 4, y)
    assert (plain - expected).abs() > 0.1  # the option changes the loss
    with pytest.raises(ValueError, match="standardize"):
        Distill(nn.Identity(), loss="mse", standardize=True)


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


CFG = TrainConfig(epochs=1, optimizer="sgd", lr=0.05, seed=0)


def test_alpha_zero_equals_plain_training():
    torch.manual_seed(0)
    student = ts.create_model("lenet300_100")
    plain, distilled = copy.deepcopy(student), copy.deepcopy(student)
    fit(plain, _data(), CFG, progress=False)
    fit(distilled, _data(), CFG, callbacks=[Distill(ts.create_model("lenet5"), alpha=0.0)], progress=False)
    for a, b in zip(plain.parameters(), distilled.parameters()):
        torch.testing.assert_close(a, b)


def test_offline_freezes_teacher_online_trains_it_hooks_removed():
    torch.manual_seed(0)
    for online in (False, True):
        teacher, student = ts.create_model("lenet5"), ts.create_model("lenet5_classic")
        t0, s0 = copy.deepcopy(teacher.state_dict()), copy.deepcopy(student.state_dict())
        cb = Distill(teacher, T=4.0, alpha=0.7, online=online, hints=[("7", "5")])
        fit(student, _data(), CFG, callbacks=[cb], progress=False)
        changed = any(not torch.equal(t0[k], v) for k, v in teacher.state_dict().items())
        assert changed == online
        assert any(not torch.equal(s0[k], v) for k, v in student.state_dict().items())
        assert set(student.state_dict()) == set(s0)  # no regressor left in the student
        assert all(not m._forward_hooks for m in list(student.modules()) + list(teacher.modules()))


def test_online_resume_restores_teacher_and_regressors(tmp_path):
    """A crashed online run with hints resumes to the uninterrupted result: the checkpoint
    holds the teacher, the hint regressors and their optimizer, not only the student."""
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, seed=0)
    steps = len(_data())

    def run(crash_at=None, ckpt=None):
        torch.manual_seed(0)
        teacher, student = ts.create_model("lenet5"), ts.create_model("lenet5_classic")
        cb = Distill(teacher, T=4.0, alpha=0.7, online=True, hints=[("7", "5")])

        class Crash(Callback):
            def after_step(self, model, step):
                if step == crash_at:
                    raise KeyboardInterrupt

        fit(student, _data(), cfg, callbacks=[cb, Crash()], checkpoint_dir=ckpt, progress=False)
        return student, teacher, cb.regressors

    straight = run()
    with pytest.raises(KeyboardInterrupt):
        run(crash_at=steps + 1, ckpt=tmp_path)
    resumed = run(ckpt=tmp_path)
    for a, b in zip(straight, resumed):
        for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(u, v), k


def test_bad_distill_settings():
    for bad in ({"T": 0}, {"alpha": 1.5}, {"loss": "l1"}):
        with pytest.raises(ValueError):
            Distill(nn.Identity(), **bad)
    with pytest.raises(RecipeError, match="teacher"):
        parse_recipe({"model": {"name": "lenet5"}, "train": {"distill": {"teacher": "original"}}})
    with pytest.raises(RecipeError, match="unknown key"):
        parse_recipe(
            {
                "model": {"name": "lenet5"},
                "stages": [{"finetune": {"epochs": 1, "distill": {"teacher": "original", "temp": 3}}}],
            }
        )


def test_recipe_distills_from_its_own_baseline_and_from_a_teacher_file(fashion_dir, tmp_path):
    data = {"name": "fashion_mnist", "dir": str(fashion_dir), "subset": 600, "val_size": 100, "batch_size": 100}
    first = {
        "name": "kd",
        "model": {"name": "lenet300_100"},
        "data": data,
        "train": {"epochs": 1, "optimizer": "adam", "lr": 0.001},
        "stages": [
            {
                "method": "prune.magnitude",
                "sparsity": 0.8,
                "finetune": {
                    "epochs": 1,
                    "optimizer": "adam",
                    "lr": 0.0005,
                    "distill": {"teacher": "original", "T": 4, "alpha": 0.5},
                },
            }
        ],
        "export": {"latency": False},
    }
    run_recipe(first, tmp_path / "a")
    student = {
        "name": "student",
        "model": {"name": "lenet5_classic"},
        "data": data,
        "export": {"latency": False},
        "train": {
            "epochs": 1,
            "optimizer": "adam",
            "lr": 0.001,
            "distill": {"teacher": str(tmp_path / "a" / "00_baseline.slim"), "alpha": 0.5},
        },
    }
    run_recipe(student, tmp_path / "b")
    teacher, *steps = json.loads((tmp_path / "b" / "report.json").read_text())
    # the teacher row is the teacher file measured on the same test data, and every student row
    # carries its differences to it; lenet300_100 (266,610 weights, 266,200 MACs) teaches
    # lenet5_classic (61,706 weights, 416,520 MACs)
    assert teacher["step"] == "teacher" and teacher["params"] == 266_610 and teacher["macs"] == 266_200
    base = ts.load(tmp_path / "a" / "00_baseline.slim").eval()
    loaders = make_loaders(DataConfig(**{k: v for k, v in data.items() if k != "name"}), seed=0)
    assert teacher["top1"] == pytest.approx(evaluate(base, loaders.test)["top1"], abs=1e-9)
    assert steps and all(r["params"] == 61_706 and r["macs"] == 416_520 for r in steps)
    for r in steps:
        assert r["top1_vs_teacher"] == round(r["top1"] - teacher["top1"], 2)
        assert r["teacher_params_ratio"] == round(266_610 / 61_706, 2) == 4.32
        assert r["teacher_macs_ratio"] == round(266_200 / 416_520, 2) == 0.64


def test_cached_teacher_logits_give_the_same_training():
    torch.manual_seed(0)
    student, teacher = ts.create_model("lenet300_100"), ts.create_model("lenet5").eval()
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    cache = {}
    fit(
        a,
        _data(),
        TrainConfig(epochs=2, optimizer="sgd", lr=0.05, seed=0),
        callbacks=[Distill(teacher)],
        progress=False,
    )
    fit(
        b,
        _data(),
        TrainConfig(epochs=2, optimizer="sgd", lr=0.05, seed=0),
        callbacks=[Distill(teacher, cache=cache)],
        progress=False,
    )
    assert len(cache) == 64
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


def test_cli_distill_errors_are_clean(capsys):
    from torchslim.cli import main

    assert main(["distill", "--teacher", "no/such.slim", "--student", "lenet5"]) == 2
    assert "no file 'no/such.slim'" in capsys.readouterr().err
    assert main(["distill", "--teacher", "x.slim", "--student", "lenet5", "--kwargs", "{bad"]) == 2
