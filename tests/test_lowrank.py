"""Low-rank factorizations and rank selection."""

import copy
import warnings

import pytest
import torch
import torch.nn as nn

import torchslim as ts
from references import lowrank_reference
from torchslim.lowrank import CP, SVD, Auto, Spatial, Tucker, energy_rank, vbmf_rank
from torchslim.lowrank.factorize import _CPF, _SVDF, _SpatialF, _TuckerF
from torchslim.measure import count_macs

from contract import MethodContract


class TestTuckerContract(MethodContract):
    config = Tucker(selection="budget", target_macs=0.6, prefer="size")
    bad_configs = (
        lambda: Tucker(selection="auto"),
        lambda: Tucker(selection="budget"),
        lambda: Tucker(selection="fixed"),
        lambda: Tucker(selection="fixed", rank=1.5),
        lambda: Tucker(energy=0.0),
        lambda: Tucker(prefer="fast"),
        lambda: Tucker(selection="budget", target_macs=1.0),
        lambda: Tucker(round_to=0),
    )
    model_names = ("vgg_small", "resnet20")

    def prepare_reference(self, original, prepared):
        return lowrank_reference(original, prepared, "hosvd")


class TestSVDContract(MethodContract):
    config = SVD(selection="fixed", rank=0.25, prefer="size")
    bad_configs = (lambda: SVD(selection="fixed", rank=0),)
    model_names = ("lenet300_100", "vgg_small")

    def prepare_reference(self, original, prepared):
        return lowrank_reference(original, prepared, "eckart_young")


class TestSpatialContract(MethodContract):
    config = Spatial(selection="fixed", rank=0.5, prefer="size")
    bad_configs = (lambda: Spatial(selection="fixed", rank=-1), lambda: Spatial(allocate="even"))
    model_names = ("lenet5", "vgg_small")

    def prepare_reference(self, original, prepared):
        return lowrank_reference(original, prepared, "eckart_young")


class TestCPContract(MethodContract):
    config = CP(selection="fixed", rank=6, prefer="size")
    bad_configs = (lambda: CP(selection="budget", target_macs=0.0), lambda: CP(energy=1.5))
    model_names = ("lenet5", "resnet20")

    def prepare_reference(self, original, prepared):
        return lowrank_reference(original, prepared, "ls")


class TestAutoContract(MethodContract):
    config = Auto(selection="fixed", rank=0.5, prefer="size")
    bad_configs = (
        lambda: Auto(forms=()),
        lambda: Auto(forms=("cp",)),
        lambda: Auto(batches=(0,)),
        lambda: Auto(batches=(1, 2.5)),
        lambda: Auto(selection="budget"),
    )
    model_names = ("lenet5", "vgg_small")

    def prepare_reference(self, original, prepared):
        return lowrank_reference(original, prepared, "by_chain")


@pytest.mark.parametrize(
    "conv",
    [
        dict(stride=1, padding=1),
        dict(stride=2, padding=1),
        dict(dilation=2, padding=2),
        dict(stride=(2, 1), padding=(0, 1)),
    ],
)
@pytest.mark.parametrize("fact", [_TuckerF(), _SpatialF()])
def test_full_rank_reproduces_conv(conv, fact):
    """Full-rank Tucker-2 / spatial factorization keeps stride, padding and dilation: same outputs."""
    torch.manual_seed(0)
    layer = nn.Conv2d(6, 8, 3, **conv).double().float()
    x = torch.randn(2, 6, 11, 11)
    full = [len(s) for s in fact.spectra(layer)]
    seq = fact.build(layer, full)
    torch.testing.assert_close(seq(x), layer(x), atol=1e-4, rtol=1e-4)


def test_svd_rank_r_is_truncated_svd():
    torch.manual_seed(0)
    lin = nn.Linear(30, 20)
    seq = _SVDF().build(lin, [5])
    u, s, vh = torch.linalg.svd(lin.weight.detach().double())
    w5 = (u[:, :5] * s[:5]) @ vh[:5]
    x = torch.randn(4, 30)
    torch.testing.assert_close(seq(x), x @ w5.float().t() + lin.bias, atol=1e-5, rtol=1e-4)
    assert seq[0].weight.shape == (5, 30) and seq[1].weight.shape == (20, 5) and seq[0].bias is None
    conv = nn.Conv2d(16, 12, 1, stride=2)
    full = _SVDF().build(conv, [12])
    xc = torch.randn(2, 16, 9, 9)
    torch.testing.assert_close(full(xc), conv(xc), atol=1e-5, rtol=1e-4)


def test_cp_layers_equal_their_cp_reconstruction():
    """The four CP layers compute exactly the conv with the reconstructed CP kernel."""
    torch.manual_seed(0)
    layer = nn.Conv2d(5, 7, 3, padding=1, stride=2)
    seq = _CPF().build(layer, [6, 6])
    assert [m.groups for m in seq] == [1, 6, 6, 1]
    # rebuild the kernel from the layers: W[n,c,i,j] = sum_r A[n,r] B[r,c] H[r,i] V[r,j]
    a, b = seq[3].weight[:, :, 0, 0], seq[0].weight[:, :, 0, 0]
    h, v = seq[1].weight[:, 0, :, 0], seq[2].weight[:, 0, 0, :]
    w = torch.einsum("nr,rc,ri,rj->ncij", a, b, h, v)
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(seq(x), nn.functional.conv2d(x, w, layer.bias, 2, 1), atol=1e-4, rtol=1e-4)


def test_energy_and_vbmf_ranks():
    s = torch.tensor([4.0, 2.0, 1.0, 0.5])
    assert energy_rank(s, 0.7) == 1 and energy_rank(s, 0.9) == 2 and energy_rank(s, 1.0) == 4
    torch.manual_seed(0)
    low = torch.randn(60, 5) @ torch.randn(5, 40) + 0.05 * torch.randn(60, 40)
    assert vbmf_rank(low) == 5


@pytest.mark.parametrize(
    "cls,allocate", [(Tucker, "spectrum"), (Tucker, "uniform"), (CP, "spectrum"), (Spatial, "uniform")]
)
def test_budget_lands_within_5_percent(cls, allocate):
    torch.manual_seed(0)
    model = ts.create_model("resnet20").eval()
    base = count_macs(model, (1, 28, 28))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the miss warning must not fire
        ts.compress_(
            model, cls(selection="budget", target_macs=0.5, prefer="size", allocate=allocate, exclude=("conv1",))
        )
    assert abs(count_macs(model, (1, 28, 28)) / base - 0.5) <= 0.05 * 0.5 + 1e-9


@pytest.mark.parametrize(
    "selection", [{"selection": "fixed", "rank": 0.3}, {"selection": "budget", "target_macs": 0.5}]
)
def test_round_to_rounds_every_rank_up_to_a_multiple(selection):
    """Bug caught: ranks rounded down (fewer than the selection chose), or not capped at full rank
    (a rank above the mode's size). The rounded plan under a budget is the one the bisection finds."""
    torch.manual_seed(0)
    model = ts.create_model("vgg_small").eval()
    plain, rounded = (
        ts.compress_(copy.deepcopy(model), Tucker(prefer="size", round_to=r, **selection)) for r in (None, 8)
    )
    ranks = {e["layer"]: e["ranks"] for e in rounded.torchslim.log if e["decision"] == "factorized"}
    full = {n: [m.out_channels, m.in_channels] for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert ranks
    for n, rs in ranks.items():
        assert all(r % 8 == 0 or r == top for r, top in zip(rs, full[n])), (n, rs)
    if selection["selection"] == "fixed":
        before = {e["layer"]: e["ranks"] for e in plain.torchslim.log if e["ranks"]}
        for n, rs in ranks.items():
            assert rs == [min(top, -(-r // 8) * 8) for r, top in zip(before[n], full[n])]


def test_decisions_logged_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = ts.create_model("vgg_small").eval()
    ts.compress_(model, Spatial(selection="fixed", rank=0.25, prefer="size", layers=("re:0\\.[0-9]+",)))
    ts.convert_(model)
    decided = {e["layer"]: e["decision"] for e in model.torchslim.log}
    assert decided["0.3"] == "factorized" and isinstance(model[0][3], nn.Sequential)
    x = torch.randn(2, 1, 28, 28)
    ts.save(model, tmp_path / "f.slim")
    loaded = ts.load(tmp_path / "f.slim")
    assert torch.equal(loaded(x), model(x))
    assert loaded.torchslim.log == model.torchslim.log


@pytest.mark.parametrize("factorized_ms, expected", [(0.5, "factorized"), (2.0, "dense")])
def test_prefer_speed_follows_the_measured_timings(monkeypatch, factorized_ms, expected):
    """A layer is factorized only when measured faster at batch 1 and 256 (controlled timings)."""
    from torchslim.lowrank import factorize as fz

    fake = {"b1": {"dense": 1.0, "factorized": factorized_ms}, "b256": {"dense": 1.0, "factorized": factorized_ms}}
    monkeypatch.setattr(fz, "time_candidates", lambda *a, **k: fake)
    torch.manual_seed(0)
    model = ts.create_model("lenet300_100").eval()
    ts.compress_(model, SVD(selection="fixed", rank=0.5, layers=("3",)))
    (entry,) = model.torchslim.log
    assert entry["timing_ms"] == fake and entry["decision"] == expected
    assert isinstance(model[3], nn.Sequential) == (expected == "factorized")


class _ThreeConvs(nn.Module):
    """A user's model (not from the registry): three 3x3 convs, c2 the most MACs, then c1, then c3."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.c2, self.b2 = nn.Conv2d(24, 24, 3, padding=1, stride=2), nn.BatchNorm2d(24)
        self.c3 = nn.Conv2d(24, 16, 3)
        self.head = nn.Linear(16 * 5 * 5, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.head(self.c3(x).flatten(1))


def test_auto_chooses_by_whole_model_timings(monkeypatch):
    """lowrank.auto (search="model") on a user's model with controlled timings: layers visited largest MACs first, each
    given the candidate ``pick`` chooses from timings of the whole model in the eager engine with the
    earlier layers at their choices. Catches: candidates timed as the layer alone (outputs of the
    layer's shape), a candidate not swapped in (equal outputs), earlier choices not kept in later
    timings, the choice not applied or not logged."""
    from torchslim.lowrank import factorize as fz

    torch.manual_seed(0)
    model = _ThreeConvs().eval()
    x = torch.randn(2, 3, 14, 14)
    faster = iter(["tucker", "spatial", None])  # per call: the candidate made fastest (None: dense stays)
    seen = []

    def fake(runners, example, batches, **kw):
        assert kw.get("rounds", 1) > 1 and batches == (1, 256)
        with torch.no_grad():
            outs = {name: run(example) for name, run in runners.items()}
        seen.append(outs)
        assert all(o.shape == (1, 5) for o in outs.values())  # the whole model's output
        assert not any(torch.equal(outs[a], outs[b]) for a in outs for b in outs if a < b)
        win = next(faster)
        return {f"b{b}": {name: 0.5 if name == win else 1.0 for name in runners} for b in batches}

    monkeypatch.setattr(fz, "time_candidates", fake)
    ts.compress_(model, Auto(selection="fixed", rank=0.5, search="model"), example_inputs=x)
    decided = {e["layer"]: e["decision"] for e in model.torchslim.log}
    assert decided == {"c2": "tucker", "c1": "spatial", "c3": "dense"}  # visited c2, c1, c3
    assert len(model.c2) == 3 and len(model.c1) == 2 and isinstance(model.c3, nn.Conv2d)
    with torch.no_grad():  # the last timing's "dense" variant is the final model (BatchNorm folded there)
        want = model.eval()(x[:1])
        torch.testing.assert_close(seen[-1]["dense"], want, rtol=1e-5, atol=1e-6)
    for e in model.torchslim.log:  # timed: dense and each form with fewer MACs than dense
        assert set(e["timing_ms"]["b1"]) == set(e["macs"]) and len(e["macs"]) >= 2, e


def test_auto_times_each_layer_alone_by_default(monkeypatch):
    """The default search times each layer's candidates alone on its real input (cheap at 224 x 224,
    where whole-model timings per candidate ran past 10 minutes). Catches: the whole model timed (the
    outputs would be logits), a candidate that is not the layer's form, the choice not applied."""
    from torchslim.lowrank import factorize as fz

    torch.manual_seed(0)
    model = _ThreeConvs().eval()
    x = torch.randn(2, 3, 14, 14)
    layer_out = {}

    def fake(runners, example, batches, **kw):
        with torch.no_grad():
            outs = {name: run(example) for name, run in runners.items()}
        dense = outs["dense"]
        assert dense.dim() == 4 and dense.shape[1] != 5  # a conv's map, not the model's logits
        assert all(o.shape == dense.shape for o in outs.values())
        layer_out[dense.shape[1]] = sorted(outs)
        win = "tucker" if "tucker" in runners else "dense"
        return {f"b{b}": {name: 0.5 if name == win else 1.0 for name in runners} for b in batches}

    monkeypatch.setattr(fz, "time_candidates", fake)
    ts.compress_(model, Auto(selection="fixed", rank=0.5), example_inputs=x)
    decided = {e["layer"]: e["decision"] for e in model.torchslim.log}
    timed = [n for n, d in decided.items() if d != "dense"]
    assert timed and all(decided[n] == "tucker" and len(getattr(model, n)) == 3 for n in timed)
    assert layer_out


def test_auto_prefer_size_takes_the_fewest_macs():
    """prefer="size": each layer becomes the form with the fewest MACs. Catches: the MACs compared
    in the wrong direction, or the chosen form not the one built into the model."""
    torch.manual_seed(0)
    model = _ThreeConvs().eval()
    ts.compress_(model, Auto(selection="fixed", rank=0.5, prefer="size"), example_inputs=torch.randn(2, 3, 14, 14))
    for e in model.torchslim.log:
        assert e["decision"] == min(e["macs"], key=e["macs"].get), e
        assert len(getattr(model, e["layer"])) == {"tucker": 3, "spatial": 2}[e["decision"]]


def test_tucker2_and_cp_als_recover_exact_low_rank_kernels():
    """The decompositions that replaced TensorLy's: a kernel that is exactly Tucker-2 of ranks
    (r_out, r_in), or exactly CP of rank r, comes back to float32 rounding (Tucker: an orthonormal
    projection, exact) or within ALS's stopping rule (|change of the relative error| < 1e-5).
    Catches: Khatri-Rao rows in another order than the unfolding's columns, HOOI updating a mode from
    the wrong projection, the scale lost from the first CP factor."""
    from torchslim.lowrank.factorize import cp_als, tucker2

    g = torch.Generator().manual_seed(0)
    for n, c, ro, ri in [(16, 12, 4, 3), (64, 32, 8, 8)]:
        u_out = torch.linalg.qr(torch.randn(n, ro, generator=g))[0]
        u_in = torch.linalg.qr(torch.randn(c, ri, generator=g))[0]
        w = torch.einsum("oihw,no,ci->nchw", torch.randn(ro, ri, 3, 3, generator=g), u_out, u_in)
        core, a, b = tucker2(w, ro, ri)
        assert float((torch.einsum("oihw,no,ci->nchw", core, a, b) - w).norm() / w.norm()) <= 1e-6
    # a generic kernel: HOOI's iterations fit better than their start, the truncated HOSVD
    w = torch.randn(32, 24, 3, 3, generator=g)
    hosvd = [
        torch.linalg.svd(w.movedim(m, 0).reshape(w.shape[m], -1), full_matrices=False)[0][:, :k]
        for m, k in ((0, 8), (1, 6))
    ]
    start = float(torch.einsum("nchw,no,ci->oihw", w, *hosvd).norm())
    assert float(tucker2(w, 8, 6)[0].norm()) > start * (1 + 1e-4)
    for r in (2, 3, 5):
        w = torch.einsum("nr,cr,hr,wr->nchw", *[torch.randn(d, r, generator=g) for d in (8, 6, 3, 3)])
        assert float((torch.einsum("nr,cr,hr,wr->nchw", *cp_als(w, r)) - w).norm() / w.norm()) <= 1e-4
