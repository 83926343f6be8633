"""``quant.uniform``: uniform integer quantization, post-training (PTQ) and
quantization-aware training (QAT) with a straight-through estimator (Jacob et al. 2018;
Krishnamoorthi 2018).

Weights: per-output-channel, ``bits`` in 2..8, symmetric (default) or affine (formulas in
:mod:`torchslim.runtime.uniform`). Activations (``act_bits=8``): per-tensor affine uint8
with ranges from calibration batches (running min/max; ``reduce_range`` uses 7 bits, as
PyTorch's x86 default does, so that CPUs without VNNI do not saturate int16 partial sums; values
beyond the calibrated range still use the upper half of uint8, as in the deploy kernels; 7 bits
by default: see :func:`reduce_range`).

Prepare folds BatchNorm into the preceding conv/linear (``act_bits=8``), traces the model
with ``torch.fx`` to find which layer outputs reach only other quantized layers (through
ReLU, max-/avg-pool, flatten, dropout, identity; those stay quantized at deploy time) and
which layer outputs go straight into a ReLU (their range starts at 0, which is the ReLU),
replaces every selected Conv2d/Linear by a fake-quant layer and calibrates. The
fake-quant layer computes exactly what the int8 layer will:
``fq_out(conv(fq_in(x), fq_w(W)) + b)`` with ``fq_in`` only where the deploy layer gets
a float input. Gradients pass straight through the rounding (clipped outside the
activation range; ``torch.fake_quantize_*``), so fine-tuning after prepare is QAT.
Convert replaces the fake-quant layers by :class:`UniformConv2d` / :class:`UniformLinear`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from torchslim.core import inputs
from torchslim.core.config import MethodConfig, check_int
from torchslim.core.fold import LeafTracer, fold_all
from torchslim.core.registry import Method, register_method
from torchslim.core.select import select
from torchslim.core.state import slim_state
from torchslim.core.surgery import same_layer, set_module
from torchslim.runtime.uniform import UniformConv2d, UniformLinear, act_codes, weight_qparams

# Modules and functions a quantized tensor passes through unchanged in scale (x86 quantized CPU ops).
# Dropout is not among them: in train mode it samples a mask, which quantized tensors cannot hold
_TRANSPARENT_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)
_TRANSPARENT_CALLS = {F.relu, torch.relu, torch.flatten, F.max_pool2d, F.adaptive_avg_pool2d}
_TRANSPARENT_METHODS = {"relu", "flatten", "view", "reshape", "contiguous"}
_RELU = (nn.ReLU,)


@dataclass(frozen=True)
class Uniform(MethodConfig):
    """Uniform integer quantization.

    Attributes:
        bits: weight bits, 2..8 (8 = int8, 4 = int4 stored two per byte).
        act_bits: 8 (static int8 activations, runs on the x86 int8 kernels) or 0 (weights only).
        symmetric: symmetric weights (zero point 0); required with ``act_bits=8``.
        calib_batches: calibration batches for activation ranges (``act_bits=8``).
        reduce_range: 7-bit activations (x86 int8 kernels sum pairs of products in saturating
            int16: on CPUs without VNNI, in grouped convs everywhere, for some shapes with VNNI);
            None (default) = True. False (8 bits) warns; a grouped conv's input keeps 7 bits
            even then. The choice is recorded in the model's log.
        min_sqnr: float fallback (``act_bits=8``): a layer whose own int8 error on the calibration
            data has ``SQNR = 10 log10(|y|^2 / |y - y_int8|^2)`` below this many dB stays float
            (squeeze-excitation gates, layers before SiLU / hardswish); None keeps every layer int8.
            The decisions and SQNRs are recorded in the model's log (and the .slim header).
        min_agreement: float fallback by the whole model's behaviour (``act_bits=8``): after the
            ``min_sqnr`` layers, while the int8 model's top-1 agrees with the float model's on
            fewer than this fraction of the calibration samples, one more layer goes back to
            float: the one whose int8 form alone (every other layer float) agrees least
            (per-layer sensitivity analysis; ties: lowest SQNR first). None: no such fallback.
        bias_correction: empirical bias correction (Nagel et al. 2019, "Data-Free Quantization
            Through Weight Equalization and Bias Correction", sec. 4.2, with calibration data):
            layer by layer in execution order, ``b_c += E[y_c float] - E[y_c int8]`` over the
            calibration samples and positions, each layer seeing the already corrected ones
            before it; removes the mean shift quantization adds (depthwise layers most).
        adaround_steps: AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
            Post-Training Quantization"), this many Adam steps per layer; 0 rounds to nearest.
            Layer by layer in execution order, each weight rounds down or up by a learned
            ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` (zeta 1.1, gamma -0.1),
            minimising ``|f(W~ x_q) - f(W x)|^2 + lambda sum(1 - |2 h(V) - 1|^beta)`` with the
            input ``x_q`` of the already rounded, int8-activation model before it and the float
            model's output as target (asymmetric reconstruction, ``f`` the ReLU after the layer
            if any; lambda 0.01, beta annealed 20 -> 2 after a 20 % warm-up without the term).
            Scales and the grid are unchanged (each channel's largest weight keeps its rounding),
            so the result is stored and run as any int8 layer; the float weights are kept (the
            layer's ``round_up`` buffer holds the choice). Runs before bias correction.
    """

    bits: int = 8
    act_bits: int = 8
    symmetric: bool = True
    calib_batches: int = 16
    reduce_range: bool | None = None
    min_sqnr: float | None = None
    min_agreement: float | None = None
    bias_correction: bool = False
    adaround_steps: int = 0
    act_range: str = "minmax"

    def validate(self) -> None:
        if self.act_range not in ("minmax", "mse"):
            raise ValueError(f"Uniform.act_range={self.act_range!r}; use 'minmax' or 'mse'")
        check_int(self, "bits", 2, 8)
        check_int(self, "adaround_steps", 0, 100_000)
        if self.adaround_steps and not self.act_bits:
            raise ValueError("Uniform.adaround_steps needs act_bits=8 (it learns the rounding on calibration data)")
        if not isinstance(self.bias_correction, bool):
            raise ValueError(f"Uniform.bias_correction={self.bias_correction!r}; use true or false")
        if self.bias_correction and not self.act_bits:
            raise ValueError("Uniform.bias_correction needs act_bits=8 (it corrects on calibration data)")
        if self.act_bits not in (0, 8):
            raise ValueError(f"Uniform.act_bits={self.act_bits!r}; use 8 (int8 activations) or 0 (weights only)")
        if self.act_bits and not self.symmetric:
            raise ValueError(
                "Uniform: act_bits=8 needs symmetric=True (the x86 int8 kernels take weights with "
                "zero point 0); use act_bits=0 for affine weights"
            )
        check_int(self, "calib_batches", 1)
        if self.min_sqnr is not None and (
            isinstance(self.min_sqnr, bool)
            or not isinstance(self.min_sqnr, (int, float))
            or not 0 <= self.min_sqnr <= 100
        ):
            raise ValueError(
                f"Uniform.min_sqnr={self.min_sqnr!r} is out of range; use a number of dB in [0, 100] or null"
            )
        if self.min_agreement is not None and (
            isinstance(self.min_agreement, bool)
            or not isinstance(self.min_agreement, (int, float))
            or not 0 < self.min_agreement <= 1
        ):
            raise ValueError(
                f"Uniform.min_agreement={self.min_agreement!r} is out of range; use a fraction in (0, 1] or null"
            )
        if self.reduce_range not in (None, True, False):
            raise ValueError(f"Uniform.reduce_range={self.reduce_range!r}; use true, false or null (by the CPU)")


class _FakeQuant(nn.Module):
    """Shared fake-quant state: weight bits, activation observers and the deploy flags."""

    def _init_fq(self, cfg: Uniform, in_q: bool, out_float: bool, relu_after: bool) -> None:
        self.bits, self.symmetric, self.act_bits = cfg.bits, cfg.symmetric, cfg.act_bits
        self.levels = 127 if reduce_range(cfg) else 255  # the calibrated range spans this many steps
        # x86 depthwise / grouped int8 kernels multiply-add uint8 x int8 pairs into saturating int16
        # on every CPU (VNNI too): 2 * 255 * 127 overflows, so their input always spans 7 bits
        self.in_levels = 127 if isinstance(self, nn.Conv2d) and self.groups > 1 else self.levels
        self.out_levels = self.levels  # 127 too where a grouped conv reads this output quantized
        self.in_q, self.out_float, self.relu_after = in_q, out_float, relu_after
        self.register_buffer("in_range", torch.tensor([float("inf"), float("-inf")]))
        self.register_buffer("out_range", torch.tensor([float("inf"), float("-inf")]))
        self.observing = False
        self.bypass = False  # compute in float (sensitivity analysis of the float fallback)
        self.raw = False  # int8 product and bias without the output requantization (bias correction)
        self.register_buffer("bias_shift", None)  # bias correction: added in the int8 path only
        self.register_buffer("round_up", None)  # AdaRound: 0 / 1 per weight added to floor(w / s)

    def int8_bias(self) -> torch.Tensor | None:
        """The bias the int8 layer adds: the float bias plus the bias correction, if any."""
        if self.bias_shift is None:
            return self.bias
        return self.bias_shift if self.bias is None else self.bias + self.bias_shift

    def fq_weight(self) -> torch.Tensor:
        scale, zp, qmin, qmax = weight_qparams(self.weight, self.bits, self.symmetric)
        if self.round_up is None:
            return torch.fake_quantize_per_channel_affine(self.weight, scale, zp.to(torch.int32), 0, qmin, qmax)
        s = scale.view((-1,) + (1,) * (self.weight.dim() - 1))
        q = torch.clamp(torch.floor(self.weight / s) + self.round_up, qmin, qmax) * s
        return self.weight + (q - self.weight).detach()  # straight-through

    def act_qparams(self, rng: torch.Tensor, levels: int) -> tuple[float, int]:
        """(scale, zero point) of range ``rng`` = [min, max], widened to contain 0, in ``levels`` steps."""
        lo, hi = min(float(rng[0]), 0.0), max(float(rng[1]), 0.0)
        if hi - lo <= 0:
            return 1.0, 0
        scale = (hi - lo) / levels
        return scale, int(min(levels, max(0, round(-lo / scale))))

    def _observe(self, rng: torch.Tensor, t: torch.Tensor) -> None:
        t = t.detach()
        rng[0] = torch.minimum(rng[0], t.min())
        rng[1] = torch.maximum(rng[1], t.max())

    def _fq_act(self, t: torch.Tensor, rng: torch.Tensor, deploy_input: bool = False) -> torch.Tensor:
        """Fake quant with the straight-through gradient (zero outside the uint8 range)."""
        scale, zp = self.act_qparams(rng, self.in_levels if deploy_input else self.out_levels)
        if not deploy_input:  # the kernel's own requantization
            return torch.fake_quantize_per_tensor_affine(t, scale, zp, 0, 255)
        q = act_codes(t.detach(), scale, zp)
        inside = ((t / scale + zp) >= -0.5) & ((t / scale + zp) <= 255.5)
        return t * inside + ((q - zp) * scale - t * inside).detach()

    def run(self, x: torch.Tensor, op) -> torch.Tensor:
        """``op(x, weight, bias)``: float weight and bias when observing or bypassed, else the
        fake-quant weight and the int8 bias."""
        if not self.act_bits:
            return op(x, self.fq_weight(), self.bias)
        if self.observing or self.bypass:
            y = op(x, self.weight, self.bias)
            if self.bypass:
                return y
            self._observe(self.in_range, x)
            self._observe(self.out_range, F.relu(y) if self.relu_after else y)
            return y
        if self.in_q:
            x = self._fq_act(x, self.in_range, deploy_input=True)
        y = op(x, self.fq_weight(), self.int8_bias())
        return y if self.raw else self._fq_act(y, self.out_range)

    def packed_args(self) -> dict:
        return dict(
            bits=self.bits,
            symmetric=self.symmetric,
            act_bits=self.act_bits,
            out_float=self.out_float,
            bias=self.int8_bias() is not None,
        )

    def fill(self, new: nn.Module) -> nn.Module:
        new.set_weight(self.weight, self.int8_bias(), self.round_up)
        if self.act_bits:
            (si, zi) = self.act_qparams(self.in_range, self.in_levels)
            (so, zo) = self.act_qparams(self.out_range, self.out_levels)
            new.act = torch.tensor([si, zi, so, zo], dtype=torch.float64)
        return new.to(self.weight.device)


class FakeQuantConv2d(nn.Conv2d, _FakeQuant):
    @classmethod
    def from_conv(cls, m: nn.Conv2d, cfg: Uniform, **flags) -> FakeQuantConv2d:
        new = same_layer(m, cls)
        new._init_fq(cfg, **flags)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self._conv_forward)

    def packed(self) -> UniformConv2d:
        return self.fill(
            UniformConv2d(
                self.in_channels,
                self.out_channels,
                list(self.kernel_size),
                list(self.stride),
                list(self.padding),
                list(self.dilation),
                self.groups,
                **self.packed_args(),
            )
        )


class FakeQuantLinear(nn.Linear, _FakeQuant):
    @classmethod
    def from_linear(cls, m: nn.Linear, cfg: Uniform, **flags) -> FakeQuantLinear:
        new = same_layer(m, cls)
        new._init_fq(cfg, **flags)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, F.linear)

    def packed(self) -> UniformLinear:
        return self.fill(UniformLinear(self.in_features, self.out_features, **self.packed_args()))


def _flags(model: nn.Module, names: set[str]) -> dict[str, dict]:
    """Per quantized layer: in_q (deploy input is float), out_float, relu_after (see module docstring)."""
    default = {n: {"in_q": True, "out_float": True, "relu_after": False} for n in names}
    try:
        graph = LeafTracer().trace(model)  # packed layers of earlier methods are leaves
    except Exception as e:  # fx raises many types on untraceable code
        warnings.warn(
            f"quant.uniform: cannot trace the model with torch.fx ({type(e).__name__}); every int8 "
            "layer quantizes its input and dequantizes its output (correct, slower)"
        )
        return default
    mods = dict(model.named_modules())

    def transparent(node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(mods.get(node.target), _TRANSPARENT_MODULES)
        if node.op == "call_function":
            return node.target in _TRANSPARENT_CALLS
        return node.op == "call_method" and node.target in _TRANSPARENT_METHODS

    def quantized(node: fx.Node) -> bool:
        return node.op == "call_module" and node.target in names

    def ends(node: fx.Node) -> bool:
        """Every path from ``node``'s output reaches a quantized layer through transparent ops."""
        return bool(node.users) and all(quantized(u) or (transparent(u) and ends(u)) for u in node.users)

    out = dict(default)
    nodes = {n.target: n for n in graph.nodes if quantized(n)}
    for name, node in nodes.items():
        users = list(node.users)
        while len(users) == 1 and users[0].op == "call_module" and type(mods.get(users[0].target)) is nn.Identity:
            users = list(users[0].users)  # a folded BatchNorm
        relu = len(users) == 1 and users[0].op == "call_module" and isinstance(mods.get(users[0].target), _RELU)
        out[name] = {"in_q": True, "out_float": not ends(node), "relu_after": relu}
    for name, node in nodes.items():  # input arrives quantized iff it comes from a chained quantized layer
        src = node.args[0]
        while isinstance(src, fx.Node) and transparent(src):
            src = src.args[0]
        if isinstance(src, fx.Node) and quantized(src) and not out[src.target]["out_float"]:
            out[name]["in_q"] = False
            out[name]["source"] = src.target
    return out


def _fit_int32_bias(model: nn.Module, flags: dict[str, dict]) -> None:
    """Widen input ranges so that every bias fits int32 codes of scale ``s_in * s_w``:
    ``s_in >= max_c |b_c| / (s_w,c (2^31 - 1))``. ONNX Runtime's int8 kernels take the bias as
    such codes and saturate beyond (a random-init googlenet's classifier sees activations of
    1e-11: its bias became -2^31 codes and every output 0); ONNX Runtime's own quantizer adjusts
    scales for the same reason. A layer fed by a chained int8 layer widens that layer's output."""
    for name, m in model.named_modules():
        if not isinstance(m, _FakeQuant) or not m.act_bits or m.int8_bias() is None:
            continue
        w_scale = weight_qparams(m.weight, m.bits, m.symmetric)[0]
        need = float((m.int8_bias().detach().abs() / (w_scale * (2**31 - 1))).max())
        source = flags.get(name, {}).get("source")
        holder, rng, levels = (
            (model.get_submodule(source), "out_range", None) if source else (m, "in_range", m.in_levels)
        )
        levels = levels or holder.out_levels
        r = getattr(holder, rng)
        if holder.act_qparams(r, levels)[0] < need:
            lo = min(float(r[0]), 0.0)
            r[1] = max(float(r[1]), lo + need * levels * (1 + 1e-6))


def _channel_means(model: nn.Module, layer: nn.Module, batches: list) -> torch.Tensor:
    """Mean of ``layer``'s output per channel (dim 1 of a conv, last dim of a linear) over ``batches``."""
    total, count = 0.0, 0

    def grab(m, args, y):
        nonlocal total, count
        dims = [0, 2, 3] if y.dim() == 4 else list(range(y.dim() - 1))
        total = total + y.double().sum(dims)
        count += y.numel() // y.shape[1 if y.dim() == 4 else -1]

    handle = layer.register_forward_hook(grab)
    try:
        for x in batches:
            inputs.call(model, x)
    finally:
        handle.remove()
    return total / max(count, 1)


def _execution_order(model: nn.Module, batch) -> list[_FakeQuant]:
    """The fake-quant layers in the order one forward pass calls them."""
    order: list[nn.Module] = []
    fq = [m for m in model.modules() if isinstance(m, _FakeQuant)]
    handles = [m.register_forward_hook(lambda m, a, y: order.append(m) if m not in order else None) for m in fq]
    try:
        inputs.call(model, batch)
    finally:
        for h in handles:
            h.remove()
    return order


def _layer_io(model: nn.Module, layer: nn.Module, batches: list, float_model: bool) -> tuple[list, list]:
    """``layer``'s inputs and outputs over ``batches``: with every layer in float (``float_model``),
    or as the model runs now."""
    xs, ys = [], []
    fq = [m for m in model.modules() if isinstance(m, _FakeQuant)]

    def grab(m, args, y):
        xs.append(args[0])
        ys.append(y)

    handle = layer.register_forward_hook(grab)
    for m in fq:
        m.bypass = float_model
    try:
        for x in batches:
            inputs.call(model, x)
    finally:
        handle.remove()
        for m in fq:
            m.bypass = False
    return xs, ys


RANGE_SHRINKS = torch.linspace(0.2, 1.0, 33).tolist()


def _range_error(t: torch.Tensor, rng: torch.Tensor, levels: int, shrinks: list[float]) -> torch.Tensor:
    """Squared quantization error of ``t`` for the range ``rng`` scaled by each of ``shrinks``
    (codes clamped to [0, 255] as the deploy kernels do)."""
    t = t.detach().float().flatten()
    if t.numel() > 1 << 20:  # a fixed subsample of large tensors
        t = t[:: t.numel() // (1 << 20) + 1]
    errs = []
    for a in shrinks:
        lo, hi = min(float(rng[0]), 0.0) * a, max(float(rng[1]), 0.0) * a
        if hi - lo <= 0:
            errs.append(float(t.pow(2).sum()))
            continue
        scale = (hi - lo) / levels
        zp = int(min(levels, max(0, round(-lo / scale))))
        errs.append(float((((act_codes(t, scale, zp) - zp) * scale) - t).pow(2).sum()))
    return torch.tensor(errs, dtype=torch.float64)


def _mse_ranges(model: nn.Module, batches: list) -> None:
    """``act_range="mse"``: shrink each calibrated activation range [min, max] (scaled towards 0 by a
    factor in [0.2, 1]) to the one with the least squared quantization error over the calibration
    data, as PyTorch's HistogramObserver and TensorRT's calibrators do instead of the raw extremes:
    one outlier otherwise spends most of the 256 codes on values that almost never occur."""
    fq = {
        m: [torch.zeros(len(RANGE_SHRINKS), dtype=torch.float64)] * 2
        for m in model.modules()
        if isinstance(m, _FakeQuant)
    }

    def grab(m, args, y):
        if m.in_q:
            fq[m][0] = fq[m][0] + _range_error(args[0], m.in_range, m.in_levels, RANGE_SHRINKS)
        fq[m][1] = fq[m][1] + _range_error(F.relu(y) if m.relu_after else y, m.out_range, m.out_levels, RANGE_SHRINKS)

    handles = [m.register_forward_hook(grab) for m in fq]
    for m in fq:
        m.bypass = True
    try:
        for x in batches:
            inputs.call(model, x)
    finally:
        for h in handles:
            h.remove()
        for m in fq:
            m.bypass = False
    for m, (e_in, e_out) in fq.items():
        for rng, err in ((m.in_range, e_in), (m.out_range, e_out)):
            if torch.isfinite(rng).all():
                rng.mul_(RANGE_SHRINKS[int(err.argmin())])


ADAROUND_ZETA, ADAROUND_GAMMA, ADAROUND_LAMBDA, ADAROUND_LR = 1.1, -0.1, 0.01, 1e-2


def _rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """AdaRound's ``h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1)``."""
    return (torch.sigmoid(v) * (ADAROUND_ZETA - ADAROUND_GAMMA) + ADAROUND_GAMMA).clamp(0, 1)


def _adaround_layer(layer: _FakeQuant, xs: list, targets: list, steps: int, batch: int = 32) -> None:
    """Learn ``layer``'s rounding (see ``Uniform.adaround_steps``) and write the rounded weight."""
    w = layer.weight.detach()
    scale, _, qmin, qmax = weight_qparams(w, layer.bits, layer.symmetric)
    s = scale.view((-1,) + (1,) * (w.dim() - 1))
    floor = torch.floor(w / s)
    rest = (w / s - floor).clamp(1e-4, 1 - 1e-4)
    # h(V) = rest at the start: V = -log((zeta - gamma) / (rest - gamma) - 1)
    v = (-torch.log((ADAROUND_ZETA - ADAROUND_GAMMA) / (rest - ADAROUND_GAMMA) - 1)).requires_grad_(True)
    amax = w.flatten(1).abs().amax(1).view(s.shape)
    fixed = w.abs() >= amax * (1 - 1e-6)  # the scale's own weight keeps its nearest rounding
    nearest_up = torch.round(w / s) - floor
    op = layer._conv_forward if isinstance(layer, nn.Conv2d) else F.linear
    x_all = torch.cat([layer._fq_act(x, layer.in_range, deploy_input=True) if layer.in_q else x for x in xs])
    y_all = torch.cat(targets)
    if layer.relu_after:
        y_all = F.relu(y_all)
    bias = layer.int8_bias()
    bias = None if bias is None else bias.detach()
    opt = torch.optim.Adam([v], lr=ADAROUND_LR)
    gen = torch.Generator().manual_seed(0)
    warm = int(0.2 * steps)

    def up(hard: bool) -> torch.Tensor:
        return torch.where(fixed, nearest_up, (v >= 0).to(w.dtype) if hard else _rectified_sigmoid(v))

    with torch.enable_grad():
        for step in range(steps):
            idx = torch.randint(0, len(x_all), (min(batch, len(x_all)),), generator=gen)
            y = op(x_all[idx], torch.clamp(floor + up(False), qmin, qmax) * s, bias)
            if layer.relu_after:
                y = F.relu(y)
            loss = (y - y_all[idx]).pow(2).sum(1).mean()  # summed over channels, mean over samples and positions
            if step >= warm:
                beta = 20 + (2 - 20) * (step - warm) / max(steps - warm, 1)
                h = _rectified_sigmoid(v)
                loss = loss + ADAROUND_LAMBDA * (1 - (2 * h - 1).abs().pow(beta)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    layer.round_up = up(True).detach()


def _adaround(model: nn.Module, batches: list, steps: int) -> None:
    """AdaRound every fake-quant layer in execution order (see ``Uniform.adaround_steps``)."""
    for layer in _execution_order(model, batches[0]):
        _, targets = _layer_io(model, layer, batches, float_model=True)
        xs, _ = _layer_io(model, layer, batches, float_model=False)
        _adaround_layer(layer, xs, targets, steps)


def _correct_bias(model: nn.Module, batches: list) -> None:
    """Empirical bias correction (see ``Uniform.bias_correction``): every layer's float output means
    (every layer bypassed: float weights, float biases), then layer by layer in execution order the
    int8 means with the layers before already corrected; the shift goes to ``bias_shift``, which only
    the int8 path adds. A layer's int8 output is compared before its requantization (which clips,
    e.g. at a ReLU)."""
    order = _execution_order(model, batches[0])
    fq = [m for m in model.modules() if isinstance(m, _FakeQuant)]
    for m in fq:
        m.bypass = True
    want = {m: _channel_means(model, m, batches) for m in order}
    for m in fq:
        m.bypass = False
    for layer in order:
        layer.raw = True
        got = _channel_means(model, layer, batches)
        layer.raw = False
        layer.bias_shift = (want[layer] - got).to(layer.weight.dtype)


def _full_range_warning() -> str:
    """What 8-bit activation ranges cost on this CPU: without VNNI (AVX2-only CPUs) fbgemm sums pairs
    of u8 x s8 products in saturating int16 (``vpmaddubsw``), so most outputs of a converted model
    differ from its fake-quant form (485 of 640 logits of lenet5 / vgg_small on an AVX2-only EPYC);
    with VNNI only grouped convs and some shapes can saturate."""
    from torchslim.measure.latency import cpu_flags

    if "avx512_vnni" not in cpu_flags():
        cpu = "this CPU has no AVX-512 VNNI: its x86 int8 kernels sum in saturating int16, so the converted "
        cpu += "model will differ from the prepared one on most outputs"
    else:
        cpu = "the x86 int8 kernels can saturate their int16 partial sums on grouped convs and some shapes "
        cpu += "even with VNNI, so the converted model may differ from the prepared one"
    return (
        f"quant.uniform: reduce_range=False (8-bit activation ranges): {cpu}; keep the default (7 bits) "
        "unless its outputs are checked"
    )


def reduce_range(config: Uniform) -> bool:
    """``config.reduce_range``, 7 bits when None (as PyTorch's x86 default): fbgemm multiply-adds
    uint8 x int8 pairs into saturating int16 on CPUs without VNNI, in its depthwise / grouped
    kernels on every CPU, and for some other shapes on VNNI CPUs too (measured on an AVX-512 VNNI
    CPU: timm's mobilenetv2_100 converted 4.3 % away from its fake-quant model with 8-bit ranges,
    0.0 with 7-bit; the hand-written look-alikes never hit it)."""
    return True if config.reduce_range is None else config.reduce_range


def _layer_sqnr(model: nn.Module, batches: list) -> dict[str, float]:
    """Per fake-quant layer: SQNR (dB) of its int8 output against its float output on the same input."""
    sig: dict[str, float] = {}
    err: dict[str, float] = {}

    def hook(name: str):
        def grab(m, args, y):
            x = args[0]
            ref = nn.Conv2d.forward(m, x) if isinstance(m, nn.Conv2d) else nn.Linear.forward(m, x)
            if m.relu_after:  # the output range starts at 0 because a ReLU follows: compare after it
                ref, y = F.relu(ref), F.relu(y)
            sig[name] = sig.get(name, 0.0) + float(ref.pow(2).sum())
            err[name] = err.get(name, 0.0) + float((y - ref).pow(2).sum())

        return grab

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, _FakeQuant)]
    try:
        for x in batches:
            inputs.call(model, x)
    finally:
        for h in handles:
            h.remove()
    return {n: 10 * math.log10(max(sig[n], 1e-30) / max(err[n], 1e-30)) for n in sig}


def _top1(model: nn.Module, batches: list) -> torch.Tensor:
    from torchslim.core.inputs import select_output

    return torch.cat([select_output(inputs.call(model, x)).argmax(-1).flatten() for x in batches])


def _to_float(model: nn.Module, low: set[str], layers: Iterable[str]) -> None:
    """The fake-quant layers named in ``low`` become float again; the flags of the others are
    re-derived (a float neighbour breaks the int8 chain)."""
    for name in low:
        if isinstance(model.get_submodule(name), _FakeQuant):
            set_module(model, name, same_layer(model.get_submodule(name)))
    for name, f in _flags(model, {n for n in layers if n not in low}).items():
        m = model.get_submodule(name)
        m.in_q, m.out_float = f["in_q"], f["out_float"]


def _float_fallback(model: nn.Module, config: Uniform, batches: list, reference: torch.Tensor | None) -> None:
    """Keep in float the layers whose int8 SQNR is below ``config.min_sqnr``, then, most harmful
    alone first, more layers while the top-1 agreement with the float predictions ``reference`` on
    the calibration batches is below ``config.min_agreement``; the decisions go to the model's log."""
    sqnr = _layer_sqnr(model, batches)
    low = {n for n, v in sqnr.items() if config.min_sqnr is not None and v < config.min_sqnr}
    _to_float(model, low, sqnr)
    agreement, alone = None, {}
    if config.min_agreement is not None:
        fq = {n: m for n, m in model.named_modules() if isinstance(m, _FakeQuant)}
        for name in fq:  # each int8 layer alone, every other layer in float
            for n, m in fq.items():
                m.bypass = n != name
            alone[name] = float((_top1(model, batches) == reference).float().mean())
        for m in fq.values():
            m.bypass = False
        agreement = float((_top1(model, batches) == reference).float().mean())
        for name in sorted(set(sqnr) - low, key=lambda n: (alone[n], sqnr[n])):
            if agreement >= config.min_agreement:
                break
            low.add(name)
            _to_float(model, low, sqnr)
            agreement = float((_top1(model, batches) == reference).float().mean())
    log = slim_state(model).log
    for name, v in sorted(sqnr.items()):
        log.append(
            {
                "method": "quant.uniform",
                "layer": name,
                "sqnr_db": round(v, 2),
                "decision": "float" if name in low else "int8",
                **({"calib_agreement": round(agreement, 4)} if agreement is not None else {}),
                **({"alone_agreement": round(alone[name], 4)} if name in alone else {}),
            }
        )
    if low:
        why = [f"int8 SQNR below {config.min_sqnr} dB"] if config.min_sqnr is not None else []
        why += [f"top-1 agreement below {config.min_agreement}"] if config.min_agreement is not None else []
        warnings.warn(f"quant.uniform: keeping {sorted(low)} in float ({' or '.join(why)})")


@register_method("quant.uniform")
class UniformMethod(Method):
    config_cls = Uniform
    needs_data = True

    @classmethod
    @torch.no_grad()
    def prepare(cls, model: nn.Module, config: Uniform, data: Iterable | None = None) -> nn.Module:
        if config.act_bits and data is None:
            raise ValueError(
                "quant.uniform with act_bits=8 needs calibration data (compress_(model, config, "
                "data=loader)); use act_bits=0 for weight-only quantization"
            )
        chosen = list(select(model, config, (nn.Conv2d, nn.Linear)))
        if not chosen:
            warnings.warn("quant.uniform: no Conv2d/Linear layer selected; nothing quantized")
            return model
        was = model.training
        if config.act_bits and not reduce_range(config):
            warnings.warn(_full_range_warning())
        if config.act_bits:  # a float BatchNorm cannot sit between two int8 layers
            names = {n for n, _, _ in chosen}
            fold_all(model, keep=lambda layer, bn: layer in names)
            chosen = list(select(model, config, (nn.Conv2d, nn.Linear)))
        batches, reference = [], None
        if config.act_bits:
            model.eval()
            device = next(model.parameters()).device
            for i, batch in enumerate(data):  # the same batches calibrate, measure SQNR and agreement
                if i >= config.calib_batches:
                    break
                batches.append(inputs.to(inputs.of_batch(batch), device))
            if config.min_agreement is not None:
                reference = _top1(model, batches)  # the float model's predictions
            slim_state(model).log.append({"method": "quant.uniform", "layer": "", "reduce_range": reduce_range(config)})
        flags = _flags(model, {n for n, _, _ in chosen}) if config.act_bits else {}
        for name, m, cfg in chosen:
            f = dict(flags.get(name, {"in_q": True, "out_float": True, "relu_after": False}))
            f.pop("source", None)
            new = (FakeQuantConv2d.from_conv if isinstance(m, nn.Conv2d) else FakeQuantLinear.from_linear)(m, cfg, **f)
            set_module(model, name, new)
        for name, f in flags.items():  # a grouped conv's quantized input comes as its source's output
            if "source" in f:
                source = model.get_submodule(f["source"])
                source.out_levels = min(source.out_levels, model.get_submodule(name).in_levels)
        if config.act_bits:
            fq = [m for m in model.modules() if isinstance(m, _FakeQuant)]
            for m in fq:
                m.observing = True
            for x in batches:
                inputs.call(model, x)
            for m in fq:
                m.observing = False
            if config.act_range == "mse":
                _mse_ranges(model, batches)
            if config.adaround_steps:
                _adaround(model, batches, config.adaround_steps)
            if config.bias_correction:
                _correct_bias(model, batches)
            _fit_int32_bias(model, flags)
            if config.min_sqnr is not None or config.min_agreement is not None:
                _float_fallback(model, config, batches, reference)
        return model.train(was)

    @classmethod
    def convert(cls, model: nn.Module, config: Uniform) -> nn.Module:
        for name, m in list(model.named_modules()):
            if isinstance(m, _FakeQuant):
                set_module(model, name, m.packed())
        return model
