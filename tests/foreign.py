"""Real architectures that nobody in this project wrote: timm and torchvision model definitions
with random init (no weights are downloaded), and the pipeline a user runs on them, one method at
a time: ``compress_`` -> forward -> ``convert_`` -> forward -> a train-mode forward -> ``save`` ->
``load(path, model=fresh)`` -> ONNX in ONNX Runtime.

:func:`run_cell` returns one cell's outcome: ``ok`` (every check passed), ``ok`` with the layers
the method skipped (one warning naming them), ``refused`` (a ValueError naming the reason), or a
failure: ``crash`` (an exception at a step), ``wrong`` (a check failed: non-finite outputs, converted
!= prepared beyond the method's bound, reloaded != converted, ONNX Runtime != torch) or ``no-op``
(the model came out unchanged and nothing said so). int8's bound is per layer: each int8 layer
within one output code of its fake-quant layer fed the same input (rounding ties, which
random-init nets amplify end to end), and ONNX Runtime within 3x the torch int8 model's own
distance from the fake-quant model (or 5 %). Used by ``tests/test_foreign.py`` (the CI
subset) and ``benchmarks/foreign_zoo.py`` (the whole sweep). Needs timm and torchvision
(``bash setup.sh --zoo`` makes ``.venv-zoo`` with them).
"""

from __future__ import annotations

import copy
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import torchslim as ts
from test_zoo import CONFIGS, REMOVES_CHANNELS
from torchslim.core.inputs import call


@dataclass(frozen=True)
class Arch:
    """How to build one architecture: its source (``timm`` or ``torchvision``), constructor
    keyword arguments, the input (C, H, W) it is run at, and where its logits are."""

    source: str
    name: str
    input: tuple[int, int, int] = (3, 32, 32)
    kwargs: dict = field(default_factory=dict)


def _t(name: str, size: int = 32, **kw) -> Arch:
    return Arch("timm", name, (3, size, size), {"num_classes": 10, **kw})


def _tv(name: str, size: int = 32, **kw) -> Arch:
    return Arch("torchvision", name, (3, size, size), {"weights": None, **kw})


# the 17 architectures a user sweep tried first, then more styles users bring
ARCHS: dict[str, Arch] = {
    "resnet18": _t("resnet18"),
    "resnet50": _t("resnet50"),
    "mobilenetv2_100": _t("mobilenetv2_100"),
    "mobilenetv3_small_100": _t("mobilenetv3_small_100"),
    "efficientnet_b0": _t("efficientnet_b0"),
    "regnetx_002": _t("regnetx_002"),
    "densenet121": _t("densenet121"),
    "squeezenet1_0": _tv("squeezenet1_0", 64, num_classes=10),
    "shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5", num_classes=10),
    "mnasnet_small": _t("mnasnet_small"),
    "ghostnet_100": _t("ghostnet_100"),
    "repvgg_a0": _t("repvgg_a0"),
    "convnext_atto": _t("convnext_atto"),
    "resnext26ts": _t("resnext26ts"),
    "googlenet": _tv("googlenet", 64, num_classes=10, aux_logits=True, init_weights=True),
    "vit_tiny_patch16_224": _t("vit_tiny_patch16_224", 32, img_size=32),
    "lraspp_mobilenet_v3_large": _tv("lraspp_mobilenet_v3_large", 64, num_classes=4, weights_backbone=None),
    "vgg11_bn": _tv("vgg11_bn", 32, num_classes=10),
    "alexnet": _tv("alexnet", 64, num_classes=10),
    "resnet10t": _t("resnet10t"),
    "seresnext26d_32x4d": _t("seresnext26d_32x4d"),
    "dla34": _t("dla34"),
    "efficientnet_lite0": _t("efficientnet_lite0"),
    "mixnet_s": _t("mixnet_s"),
    "rexnet_100": _t("rexnet_100"),
    "lcnet_050": _t("lcnet_050"),
    "regnety_002": _t("regnety_002"),
    "mobilevit_xxs": _t("mobilevit_xxs", 64),
    "edgenext_xx_small": _t("edgenext_xx_small", 64),
    "mobilenetv4_conv_small": _t("mobilenetv4_conv_small"),
    "cspresnet50": _t("cspresnet50"),
    "inception_v3": _tv("inception_v3", 80, num_classes=10, aux_logits=True, init_weights=True),
}
# the CI subset: plain BatchNorm ResNet, norm-act layers, squeeze-excitation, depthwise / grouped convs,
# channel shuffle (torchvision), LayerNorm2d and layer scale, attention on tokens; each of its cells was
# seen passing with the final code before it joined the subset
CI_ARCHS = (
    "resnet18",
    "mobilenetv2_100",
    "mobilenetv3_small_100",
    "mnasnet_small",
    "regnetx_002",
    "shufflenet_v2_x0_5",
    "convnext_atto",
    "vit_tiny_patch16_224",
)

# int8 in ONNX Runtime rounds requantization ties its own way, layer after layer; every other
# converted form is an exact expansion there (float rounding only)
ONNX_REL = {"quant.uniform": 0.05}
INT8_TIES = 0.005  # int8 layer outputs one code away from fake quant (rounding ties); measured <= 0.06 %
EXACT_REL = 1e-4  # converted vs prepared: float rounding through up to ~100 layers, relative to the norm
# ONNX Runtime sums in other orders than torch (its own conv / GEMM kernels, fused ops): random-init
# deep nets (ViT, mobilenets) amplify that to a few 1e-4 of the output norm
ONNX_EXACT_REL = 1e-3
# beyond this bound the ONNX Runtime comparison says nothing: random-init binary nets on SiLU models
# (efficientnet_b0, mixnet, resnext26ts, mobilevit) move 100+ % under rounding-sized layer nudges
CHAOTIC = 0.5


def available() -> bool:
    try:
        import timm  # noqa: F401
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - torchvision raises RuntimeError beside a mismatched torch
        return False
    return True


def build(name: str) -> nn.Module:
    """A fresh, seeded, eval-mode instance of ``ARCHS[name]``."""
    a = ARCHS[name]
    torch.manual_seed(0)
    if a.source == "timm":
        import timm

        model = timm.create_model(a.name, pretrained=False, **a.kwargs)
    else:
        import torchvision.models as tvm

        ctor = getattr(tvm, a.name, None) or getattr(tvm.segmentation, a.name)
        model = ctor(**a.kwargs)
    return model.eval()


def example(name: str, batch: int, seed: int = 5) -> torch.Tensor:
    return torch.randn(batch, *ARCHS[name].input, generator=torch.Generator().manual_seed(seed))


def tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor a model returned (dicts by key order, tuples / named tuples in order)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k in sorted(out) for t in tensors(out[k])]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensors(o)]
    return []


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (0 when both are zero)."""
    d, n = float((a - b).float().norm()), float(b.float().norm())
    return d / n if n > 0 else d


@dataclass
class Cell:
    method: str
    arch: str
    outcome: str = "ok"  # ok | refused | warned (non-finite, said at compress_) | crash | slow | wrong | no-op
    step: str = ""
    detail: str = ""
    skipped: list[str] = field(default_factory=list)  # warnings naming skipped layers
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    onnx: str = "ok"  # or "refused: ..." (export_onnx's clear error), or "not run"
    sensitivity: float = 0.0  # relative output change of the prepared model under a 1e-6 input nudge
    engine_sensitivity: float = 0.0  # ... and under a rounding-sized nudge of every layer's output

    @property
    def failed(self) -> bool:
        return self.outcome in ("crash", "slow", "wrong", "no-op")

    def summary(self) -> str:
        if self.outcome == "ok":
            state = self.onnx.split(":")[0]
            no_onnx = "" if state == "ok" else f", ONNX {state}"
            return "ok" + (f", skips ({len(self.skipped)} warning)" if self.skipped else "") + no_onnx
        return f"{self.outcome}" + (f" at {self.step}" if self.step else "") + f": {self.detail[:90]}"

    def as_dict(self) -> dict:
        return {**asdict(self), "summary": self.summary()}


class CellTimeout(BaseException):
    """Raised by a driver's timer: a BaseException, so that no ``except Exception`` in the code
    under test (or in Torch-Pruning) mistakes a slow cell for a refusal."""


class _Fail(Exception):
    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return tensors(call(model, x))


def _check(ref: list[torch.Tensor], got: list[torch.Tensor], what: str, bound: float | None) -> float:
    """Same number and shapes of outputs, finite where the float model was, within ``bound``."""
    if len(got) != len(ref) or any(g.shape != r.shape for g, r in zip(got, ref)):
        raise _Fail("wrong", f"{what}: outputs {[tuple(g.shape) for g in got]} != {[tuple(r.shape) for r in ref]}")
    if any(not torch.isfinite(g).all() for g in got):
        raise _Fail("wrong", f"{what}: non-finite outputs")
    worst = max(rel(g, r) for g, r in zip(got, ref))
    if bound is not None and worst > bound:
        raise _Fail("wrong", f"{what}: relative difference {worst:.3g} > {bound:g}")
    return worst


def _int8_within_a_code(prepared: nn.Module, converted: nn.Module, x: torch.Tensor) -> float:
    """Each int8 layer of ``converted`` against its fake-quant layer in ``prepared`` fed the same
    input (the converted layer's own): at most one output code apart, on at most ``INT8_TIES`` of
    the elements. The int8 kernels round the bias to int32 and requantize with a float multiplier,
    so a value on a rounding tie can land one code away; random-init deep nets amplify those
    ties end to end (squeezenet1_0 0.5 %, inception_v3 8 % at the output, every layer within one
    code), which is why the end-to-end bound does not apply. Returns the largest tie fraction."""
    from torchslim.runtime.uniform import _UniformBase

    seen: dict[str, tuple] = {}

    def grab(name: str):
        def hook(m, args, out) -> None:  # cloned: a following in-place activation rewrites them
            seen[name] = tuple(t.dequantize() if t.is_quantized else t.clone() for t in (args[0], out))

        return hook

    layers = {n: m for n, m in converted.named_modules() if isinstance(m, _UniformBase) and m.act_bits}
    hooks = [m.register_forward_hook(grab(n)) for n, m in layers.items()]
    try:
        _outputs(converted, x)
    finally:
        for h in hooks:
            h.remove()
    worst, fake = 0.0, dict(prepared.named_modules())
    with torch.no_grad():
        for name, (inp, got) in seen.items():
            codes = (fake[name](inp) - got).abs() / float(layers[name].act[2])
            ties = float((codes > 0.5).float().mean())
            if codes.max() > 1.001 or ties > INT8_TIES:
                raise _Fail(
                    "wrong",
                    f"int8 layer {name}: {float(codes.max()):.2f} codes from its fake-quant layer, "
                    f"{ties:.2%} of the elements off (bound: 1 code, {INT8_TIES:.1%})",
                )
            worst = max(worst, ties)
    return worst


def _rounding_nudged(model: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> list[torch.Tensor]:
    """Outputs with every leaf module's output moved by ``eps`` x its largest magnitude (random signs):
    the size of the rounding error of a sum computed in another order (another engine, a fused
    conv + BatchNorm). Where a value sits that close to 0 before a sign (a binary layer after a
    depthwise conv: -3.7e-8 in torch, 0.0 in ONNX Runtime's folded conv), the sign is a tie that
    no engine decides the same way, and this nudge shows how far such ties move the output."""
    g = torch.Generator().manual_seed(2)

    def nudge(m, args, out):
        if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
            noise = torch.randn(out.shape, generator=g, dtype=out.dtype)
            return out + eps * float(out.abs().amax()) * noise

    hooks = [m.register_forward_hook(nudge) for _, m in model.named_modules() if not any(True for _ in m.children())]
    try:
        return _outputs(model, x)
    finally:
        for h in hooks:
            h.remove()


def _snapshot(model: nn.Module) -> tuple:
    return [type(m) for m in model.modules()], {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(before: tuple, model: nn.Module) -> bool:
    types, state = before
    now = model.state_dict()
    return (
        [type(m) for m in model.modules()] == types
        and now.keys() == state.keys()
        and all(now[k].shape == v.shape and torch.equal(now[k], v) for k, v in state.items())
    )


def _ort(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.numpy()})]


def run_cell(method: str, arch: str, tmp: Path, onnx: bool = True) -> Cell:
    """One method on one architecture, every step checked (see the module docstring)."""
    cell = Cell(method, arch)
    config = copy.deepcopy(CONFIGS[method])
    step = "build"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            t0 = time.perf_counter()
            model = build(arch)
            x = example(arch, 2)
            data = [(example(arch, 8, seed=s), torch.zeros(8, dtype=torch.long)) for s in (1, 2)]
            ref = _outputs(model, x)
            before = _snapshot(model)
            try:  # some definitions cannot run in train mode at a small input (inception_v3's aux head)
                call(copy.deepcopy(model).train(), x)
                trains = True
            except Exception:  # noqa: BLE001 - the float model's own limit, not the method's
                trains = False
            step = "compress_"
            try:
                ts.compress_(model, config, data=data, example_inputs=x)
            except ValueError as e:
                cell.outcome, cell.detail = "refused", str(e).splitlines()[0][:300]
                return cell
            cell.seconds["compress"] = time.perf_counter() - t0
            step = "prepared forward"
            prepared = _outputs(model.eval(), x)
            said = [str(w.message) for w in caught if "not finite" in str(w.message)]
            if said and any(not torch.isfinite(p).all() for p in prepared):
                cell.outcome, cell.detail = "warned", said[0][:300]  # non-finite, and compress_ said so
                return cell
            _check(ref, prepared, step, None)
            # the prepared model's own sensitivity to float rounding: a 1e-6 relative nudge of the input
            # (random-init binary nets amplify rounding ~1e5-fold: BinaryConnect's mobilenetv2)
            nudged = x * (1 + 1e-6 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
            sens = max(rel(a, b) for a, b in zip(_outputs(model, nudged), prepared))
            # another engine sums in another order: every layer's output moved by its rounding error
            engine_sens = max(sens, max(rel(a, b) for a, b in zip(_rounding_nudged(model, x), prepared)))
            cell.sensitivity, cell.engine_sensitivity = sens, engine_sens
            step = "prepared train forward"
            if trains:
                call(copy.deepcopy(model).train(), x)
            step = "convert_"
            t0 = time.perf_counter()
            fake = copy.deepcopy(model) if method == "quant.uniform" else None
            ts.convert_(model)
            cell.seconds["convert"] = time.perf_counter() - t0
            step = "converted forward"
            converted = _outputs(model.eval(), x)
            bound = max(EXACT_REL, 10 * sens)
            declared = any("differs from the masked" in str(w.message) for w in caught)  # and says why
            exact = not (method in REMOVES_CHANNELS or declared or fake is not None)
            drift = _check(prepared, converted, "converted vs prepared", bound if exact else None)
            if fake is not None:
                _int8_within_a_code(fake, model, x)
                # ONNX Runtime's int8 kernels round their own ties: its distance to torch's int8 is
                # bounded by both distances to the fake-quant model, the torch one measured here
                onnx_drift = 3 * drift
            else:
                onnx_drift = 0.0
            step = "converted train forward"
            if trains:
                call(copy.deepcopy(model).train(), x)
            step = "save"
            ts.save(model, tmp / "m.slim")
            step = "load"
            loaded = ts.load(tmp / "m.slim", model=build(arch))
            step = "loaded forward"
            again = _outputs(loaded, x)
            if len(again) != len(converted) or not all(torch.equal(a, c) for a, c in zip(again, converted)):
                raise _Fail("wrong", "the reloaded model's outputs differ from the converted model's")
            if onnx:
                step = "onnx export"
                t0 = time.perf_counter()
                try:
                    ts.export_onnx(loaded, x, tmp / "m.onnx")
                except ValueError as e:  # a clear refusal (an operator ONNX cannot express here)
                    cell.onnx = f"refused: {str(e)[:200]}"
                    onnx = False
            if onnx:
                step = "onnxruntime"
                got, what = _ort(tmp / "m.onnx", x), "ONNX Runtime vs torch"
                try:
                    _check(converted, got, what, max(ONNX_REL.get(method, ONNX_EXACT_REL), 10 * sens, onnx_drift))
                except _Fail:  # outside the input-nudge bound: do rounding ties inside the model explain it?
                    if 10 * engine_sens <= max(ONNX_REL.get(method, ONNX_EXACT_REL), 10 * sens, onnx_drift):
                        raise
                    if 10 * engine_sens > CHAOTIC:  # ties decide the output: shapes and finiteness only
                        cell.onnx = f"not comparable: rounding-sized nudges move the output {engine_sens:.0%}"
                    _check(converted, got, what, None if 10 * engine_sens > CHAOTIC else 10 * engine_sens)
                cell.seconds["onnx"] = time.perf_counter() - t0
            messages = [str(w.message) for w in caught if "torchslim" in Path(w.filename).parts]
            cell.skipped = [m for m in messages if "keeping" in m or "skipping" in m]
            step = "result"
            if _unchanged(before, loaded) and not messages:
                raise _Fail("no-op", "the model came out unchanged and no warning said so")
        except _Fail as f:
            cell.outcome, cell.step, cell.detail = f.outcome, step, f.detail
        except CellTimeout as e:  # the driver's per-cell time limit
            cell.outcome, cell.step, cell.detail = "slow", step, str(e)
        except Exception as e:  # noqa: BLE001 - the cell's outcome is the report
            last = traceback.extract_tb(e.__traceback__)[-1]
            where = f"{Path(last.filename).name}:{last.lineno}"
            msg = str(e).splitlines()[0] if str(e) else ""
            cell.outcome, cell.step, cell.detail = "crash", step, f"{type(e).__name__}: {msg[:200]} ({where})"
        finally:
            cell.warnings = sorted({str(w.message)[:300] for w in caught})
    return cell
