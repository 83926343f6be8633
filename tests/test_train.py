"""fit / evaluate: learning on real data, callbacks, schedules, checkpoint resume."""

import pytest
import torch

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.measure import evaluate
from torchslim.train import Callback, TrainConfig, fit
from torchslim.train.loop import lr_at


@pytest.fixture
def loaders(fashion_dir):
    return make_loaders(DataConfig(dir=str(fashion_dir), subset=1500, val_size=300, batch_size=64))


def test_fit_learns_fashion_mnist_slice(loaders):
    model = ts.create_model("lenet300_100")
    before = evaluate(model, loaders.test)["top1"]
    hist = fit(model, loaders.train, TrainConfig(epochs=2, optimizer="adam", lr=1e-3), val_loader=loaders.val)
    after = evaluate(model, loaders.test)
    assert after["top1"] > 60 > before + 20
    assert {"top1", "top5", "loss"} <= set(after)
    assert len(hist["epochs"]) == 2 and hist["epochs"][-1]["val_top1"] > 60


def test_callbacks_are_called(loaders):
    class Count(Callback):
        def __init__(self):
            self.steps, self.epochs, self.begun, self.ended = [], [], 0, 0

        def on_train_begin(self, model):
            self.begun += 1

        def loss_term(self, model, inputs, outputs, targets):
            return 0.0 * outputs.sum() + 1.0  # constant shifts the loss, not the gradient

        def after_step(self, model, step):
            self.steps.append(step)

        def on_epoch_end(self, model, epoch, metrics):
            self.epochs.append(epoch)
            assert metrics["train_loss"] > 1.0  # the extra term was added

        def on_train_end(self, model):
            self.ended += 1

    cb = Count()
    fit(
        ts.create_model("lenet300_100"), loaders.train, TrainConfig(epochs=2, optimizer="adam", lr=1e-3), callbacks=[cb]
    )
    n = len(loaders.train)
    assert cb.steps == list(range(2 * n)) and cb.epochs == [0, 1] and cb.begun == cb.ended == 1


def test_after_step_action_holds(loaders):
    """An after-step action (here: clip to [-0.01, 0.01]) holds after every step."""

    class Clip(Callback):
        def after_step(self, model, step):
            with torch.no_grad():
                for p in model.parameters():
                    p.clamp_(-0.01, 0.01)

    model = ts.create_model("lenet300_100")
    fit(model, loaders.train, TrainConfig(epochs=1, lr=0.1), callbacks=[Clip()])
    assert max(p.abs().max().item() for p in model.parameters()) <= 0.01


def test_resume_equals_uninterrupted(fashion_dir, tmp_path):
    """2 epochs straight == 1 epoch, a crash early in epoch 2, and a resumed run (bit for bit)."""
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.05, schedule="onecycle", seed=3)
    dc = DataConfig(dir=str(fashion_dir), subset=600, val_size=100, batch_size=50, augment=True)

    def model():
        torch.manual_seed(0)
        return ts.create_model("vgg_small", width=8)

    straight = model()
    fit(straight, make_loaders(dc, seed=3).train, cfg)

    steps_per_epoch = len(make_loaders(dc, seed=3).train)

    class Crash(Callback):
        def after_step(self, m, step):
            if step == steps_per_epoch + 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model(), make_loaders(dc, seed=3).train, cfg, checkpoint_dir=tmp_path, callbacks=[Crash()])
    assert (tmp_path / "last.ckpt").exists()
    resumed = ts.create_model("vgg_small", width=8)  # different init: the checkpoint must overwrite it
    hist = fit(resumed, make_loaders(dc, seed=3).train, cfg, checkpoint_dir=tmp_path)
    assert [e["epoch"] for e in hist["epochs"]] == [1, 2]
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_channels_last_trains_the_same_model(fashion_dir):
    """channels_last changes the memory layout only: in float64 (where the reordered sums
    agree to ~1e-13; in float32 an untrained BN network's gradients differ by ~1 %
    between any two summation orders) the trained weights are the same, and they come
    back in the default layout."""
    dc = DataConfig(dir=str(fashion_dir), subset=256, val_size=64, batch_size=64)
    batches = [(x.double(), y) for x, y in make_loaders(dc).train]
    models = []
    for cl in (False, True):
        torch.manual_seed(0)
        m = ts.create_model("shufflenetv2", width_mult=0.25).double()
        fit(m, batches, TrainConfig(epochs=1, lr=0.05, channels_last=cl))
        models.append(m)
    for (k, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert b.is_contiguous(), k
        assert torch.allclose(a, b, atol=1e-9), k


def test_resume_refuses_other_settings(fashion_dir, tmp_path):
    dc = DataConfig(dir=str(fashion_dir), subset=200, val_size=40, batch_size=50)
    fit(ts.create_model("lenet300_100"), make_loaders(dc).train, TrainConfig(epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="different train settings"):
        fit(ts.create_model("lenet300_100"), make_loaders(dc).train, TrainConfig(epochs=2), checkpoint_dir=tmp_path)


def test_schedules():
    c = TrainConfig(lr=1.0, schedule="cosine")
    assert lr_at(c, 0, 100) == 1.0 and abs(lr_at(c, 50, 100) - 0.5) < 1e-9 and lr_at(c, 100, 100) < 1e-9
    o = TrainConfig(lr=1.0, schedule="onecycle")
    assert abs(lr_at(o, 0, 100) - 0.04) < 1e-9 and abs(lr_at(o, 30, 100) - 1.0) < 1e-9 and lr_at(o, 100, 100) < 1e-3
    assert lr_at(TrainConfig(lr=0.3, schedule="constant"), 77, 100) == 0.3


def test_bad_train_config():
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="unknown key"):
        TrainConfig.from_dict({"epoch": 3})


def test_steps_per_epoch_stops_each_epoch_and_ends_the_schedule(loaders, monkeypatch):
    """Catches: ``steps_per_epoch`` ignored (whole epochs), or a schedule still sized for whole epochs
    (the cosine would end far from 0)."""
    import torchslim.train.loop as loop

    steps, totals = [], set()

    class Count(Callback):
        def after_step(self, model, step):
            steps.append(step)

    real = loop.lr_at
    monkeypatch.setattr(loop, "lr_at", lambda cfg, step, total: totals.add(total) or real(cfg, step, total))
    model = ts.create_model("lenet300_100")
    fit(model, loaders.train, TrainConfig(epochs=2, lr=0.1, steps_per_epoch=3), callbacks=[Count()], progress=False)
    assert steps == [0, 1, 2, 3, 4, 5] and len(loaders.train) > 3
    assert totals == {6}
    with pytest.raises(ValueError, match="steps_per_epoch"):
        TrainConfig(steps_per_epoch=0)
