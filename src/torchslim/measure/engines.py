"""Inference engines a converted model runs in, behind one interface, and the choice among them.

* ``eager``: torchslim's own runtime layers in plain PyTorch (numba / int8 / sparse kernels),
  non-overlapping max pooling as a maximum of strided views (:mod:`torchslim.runtime.pool`) or, after
  a bit-packed binary conv, inside that conv's epilogue, which also emits the next binary conv's
  packed sign words where only that conv reads its output (:func:`fused_binary`), and
  each BatchNorm that reads only a float conv's / linear's output folded into it
  (``W' = s W, b' = s (b - mu) + beta``; equal up to float32 rounding, so logits move by ~1e-6
  relative and a near-tie prediction may flip); and channels-last (NHWC) tensors for models whose
  convolutions are plain ``nn.Conv2d`` (:func:`prefers_channels_last`; the runner's ``layout``
  says which one runs). Measured on the project's AMD EPYC at batch 256: float vgg_small 107 ->
  81 ms, its filter-pruned form 84 -> 51 ms, Tucker 128 -> 78 ms, CP 307 -> 103 ms (oneDNN's
  NHWC convolutions; irregular pruned channel counts cost less there), at batch 1 equal or
  faster. Packed layers whose kernel is the dense op on their expanded weight (codebook
  layers, binary weights on float inputs, a sparse layer whose measured kernel is dense) run
  as that plain layer (:func:`dense_view`), so they fold and go channels-last like the float
  model; direct sparse convolutions pass their batch-last outputs on (``layout``
  ``batch_last``, :func:`batch_last_view`). The model itself is left unchanged.
* ``pytorch``: the model's modules exactly as they are (the plain-PyTorch reference).
* ``compile``: ``torch.compile`` (inductor, CPU) of the same model.
* ``onnxruntime``: the model exported by :func:`torchslim.export.onnx.export_onnx` (int8 as a
  QDQ graph, packed layers as their exact dense expansion) run by ONNX Runtime.
* ``auto``: each available engine timed on the model at batch 1 and ``big_batch`` (the sum of
  the two medians), the fastest used; the timings are returned with the choice.

An engine is an ``nn.Module`` wrapper, so :func:`torchslim.train.evaluate` and
:func:`torchslim.measure.latency_ms` measure it as they measure the model itself.
"""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from torchslim.core import inputs

ENGINES: dict[str, Callable[[nn.Module, tuple], nn.Module]] = {}


def engine(name: str):
    """Register an engine builder ``fn(model, input_shape) -> nn.Module``."""

    def deco(fn):
        ENGINES[name] = fn
        return fn

    return deco


class _Runner(nn.Module):
    """An engine's callable as a module (no parameters of its own: runs on the CPU)."""

    def __init__(self, name: str, fn: Callable, keep: object = None) -> None:
        super().__init__()
        self.name, self.fn, self._keep = name, fn, keep
        self.training = False

    def train(self, mode: bool = True) -> _Runner:
        """Only the runner's own flag: an engine runs inference, and the modules it wraps are shared
        with the user's model, which ``evaluate``'s ``train(was_training)`` must not switch to
        training mode (Dropout on, BatchNorm statistics updated)."""
        self.training = mode
        return self

    def forward(self, *x):
        return self.fn(*x)


@engine("eager")
def _eager(model: nn.Module, input_shape: tuple) -> nn.Module:
    from torchslim.runtime.pool import fast_pooling

    view = fast_pooling(fused_binary(folded_bn(dense_view(model.eval()))))
    if prefers_channels_last(view):
        run = _Runner("eager", _ChannelsLast(channels_last_view(view)))
        run.layout = "channels_last"
    elif (bl := batch_last_view(view, input_shape)) is not view:
        run = _Runner("eager", bl)
        run.layout = "batch_last"
    else:
        run = _Runner("eager", view)
        run.layout = "contiguous"
    return run


def fused_binary(model: nn.Module) -> nn.Module:
    """A view of ``model`` where bit-packed binary convs
    (:class:`torchslim.runtime.binary.PackedBinaryConv2d`) take over what reads their output:

    * a non-overlapping ``nn.MaxPool2d`` that is the only reader of a binary conv's output (through
      ``nn.Identity`` modules: a folded BatchNorm, a removed ReLU) pools in the conv's epilogue
      (``pool``) and becomes ``nn.Identity``: the unpooled map is never written to memory
      (vgg_small's first binary block: a 25.7 MB map at batch 256). Exact: the same maximum.
    * a binary conv whose output (pooled or not, through ``nn.Identity`` modules) only another binary
      conv reads, one with binary inputs and neither XNOR's K nor a real-valued shortcut (both need
      the float values), emits that conv's packed input words directly (``emit``): its epilogue
      compares each output with the next conv's threshold and sets the sign bits, so the float map
      is neither written nor read back and packed (the issue's "bits from one binary layer to the
      next"; BNN without Bi-Real shortcuts). Pooling on signs is an AND of words. Exact: the same
      comparisons of the same floats. Only with the numba kernels (CPU).

    Modules called at more than one place, and pooling written as a function call, are left alone;
    an untraceable model is returned as it is."""
    from torchslim.core.fold import _Tracer
    from torchslim.runtime.base import RuntimeLayer
    from torchslim.runtime.binary import PackedBinaryConv2d, _numba_kernels
    from torchslim.runtime.pool import StridedMaxPool2d, pair, with_modules

    if not any(isinstance(m, PackedBinaryConv2d) for m in model.modules()):
        return model
    try:
        graph = _Tracer((RuntimeLayer,)).trace(model)
    except Exception:  # noqa: BLE001 - fx raises many types on untraceable code: nothing fused
        return model
    mods = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    swap: dict[int, nn.Module] = {}

    def view(m: nn.Module) -> nn.Module:  # one copy per module, changed in place by every fusion
        return swap.setdefault(id(m), copy.copy(m))

    bits = bool(_numba_kernels())
    for node in graph.nodes:
        conv = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(conv, PackedBinaryConv2d) or calls[node.target] != 1:
            continue
        cur, pool = node, None
        while len(cur.users) == 1 and (user := next(iter(cur.users))).op == "call_module":
            m = mods[user.target]
            if type(m) is nn.Identity:
                cur = user
            elif pool is None and StridedMaxPool2d.applies(m) and calls[user.target] == 1:
                cur, pool = user, m
                view(conv).pool = pair(m.kernel_size)
                swap[id(m)] = nn.Identity()
            else:
                reads_bits = isinstance(m, PackedBinaryConv2d) and m.binary_input and not m.input_scaling
                if bits and reads_bits and not m.shortcut and calls[user.target] == 1 and conv.binary_input:
                    view(conv).emit = (m.threshold, tuple(m.padding))  # m reads any integer input as words
                break
    return with_modules(model, lambda m: swap.get(id(m))) if swap else model


def batch_last_view(model: nn.Module, input_shape: tuple) -> nn.Module:
    """A view of ``model`` whose direct sparse convolutions pass their batch-last output on as it is
    (:class:`torchslim.runtime.sparse.SparseConv2d`), so the next sparse conv and the pooling between
    them need no transpose. A model whose own code needs NCHW-contiguous tensors there (``.view``
    after a conv) fails on the view; it is tried once at batch 2 and ``model`` is returned if it fails."""
    from torchslim.runtime.pool import with_modules
    from torchslim.runtime.sparse import SparseConv2d

    def swap(m: nn.Module) -> nn.Module | None:
        if not isinstance(m, SparseConv2d) or m.kernel != "sparse":
            return None
        new = copy.copy(m)
        new.batch_last = True
        return new

    view = with_modules(model, swap)
    if view is model:
        return model
    try:
        with torch.no_grad():
            inputs.call(view, inputs.from_shape(input_shape, batch=2))
    except Exception:  # noqa: BLE001 - e.g. a .view() of a batch-last tensor: keep NCHW outputs
        return model
    return view


def dense_view(model: nn.Module) -> nn.Module:
    """A view of ``model`` with every packed layer whose kernel is the dense op on its expanded
    weight replaced by that dense layer (:meth:`RuntimeLayer.as_dense`); the model is not changed."""
    from torchslim.runtime.base import RuntimeLayer
    from torchslim.runtime.pool import with_modules

    return with_modules(model, lambda m: m.as_dense() if isinstance(m, RuntimeLayer) else None)


def prefers_channels_last(model: nn.Module) -> bool:
    """Channels-last when the model's convolutions are oneDNN's (plain ``nn.Conv2d`` past the
    input layer) or packed ones that read and write NHWC themselves (``takes_channels_last``: the
    bit-packed binary conv), and no other packed convolution would have to copy its input back to
    NCHW (the int8, sparse and product kernels read NCHW). A fixed rule rather than a timing at
    build time, so that the layout, and the float rounding that comes with it, is the same on every
    run."""
    from torchslim.runtime.base import RuntimeLayer

    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, RuntimeLayer)) and hasattr(m, "kernel_size")]
    if any(isinstance(m, RuntimeLayer) and not getattr(m, "takes_channels_last", False) for m in convs):
        return False
    return any(isinstance(m, RuntimeLayer) or (type(m) is nn.Conv2d and m.in_channels > 1) for m in convs)


class _ChannelsLast(nn.Module):
    """Runs ``module`` on channels-last copies of its 4-D inputs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *x):
        return self.module(*(_nhwc(t) if t.dim() == 4 else t for t in x))


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """``t`` with explicit channels-last strides (see :func:`channels_last_view`)."""
    return torch.empty_like(t, memory_format=torch.channels_last).copy_(t)


def channels_last_view(model: nn.Module) -> nn.Module:
    """A view of ``model`` whose plain ``nn.Conv2d`` layers hold channels-last weights (copies of
    the weights; the model is not changed)."""
    from torchslim.runtime.pool import with_modules

    def swap(m: nn.Module) -> nn.Module | None:
        if type(m) is not nn.Conv2d:
            return None
        new = copy.copy(m)
        new._parameters = dict(m._parameters)
        # empty_like gives explicit NHWC strides also where a size-1 dim makes them ambiguous
        # (1x1 and depthwise kernels); .contiguous() would keep NCHW strides there, and oneDNN
        # would then run that conv in NCHW with layout conversions around it (2.4x slower CP)
        w = torch.empty_like(m.weight, memory_format=torch.channels_last).copy_(m.weight.detach())
        new.weight = nn.Parameter(w, False)
        return new

    return with_modules(model, swap)


def folded_bn(model: nn.Module) -> nn.Module:
    """A view of ``model`` (eval mode) with every foldable (Conv2d / Linear, BatchNorm) pair folded
    (:func:`torchslim.core.fold.fold_pair`); the model is not changed. An untraceable model is
    returned as it is."""
    from torchslim.core.fold import conv_bn_pairs, fold_pair
    from torchslim.core.surgery import get_module
    from torchslim.runtime.base import RuntimeLayer
    from torchslim.runtime.pool import with_modules

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # untraceable: nothing folded
        pairs = conv_bn_pairs(model, leaves=(RuntimeLayer,))
    swap: dict[int, nn.Module] = {}
    for layer, bn in pairs:
        swap[id(get_module(model, layer))] = fold_pair(get_module(model, layer), get_module(model, bn))
        swap[id(get_module(model, bn))] = nn.Identity()
    return with_modules(model, lambda m: swap.get(id(m))) if swap else model


@engine("pytorch")
def _pytorch(model: nn.Module, input_shape: tuple) -> nn.Module:
    return _Runner("pytorch", model.eval())


@engine("compile")
def _compile(model: nn.Module, input_shape: tuple) -> nn.Module:
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers left running
    compiled = torch.compile(model.eval(), dynamic=False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inputs.call(compiled, inputs.from_shape(input_shape))  # compile now, not inside a timing
    return _Runner("compile", compiled)


def onnx_runner(path: str | os.PathLike, keep: object = None) -> nn.Module:
    """An ONNX file run by ONNX Runtime on the CPU at torch's thread count, as a module."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("the onnxruntime engine needs: pip install 'torchslim[onnx]'") from None
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    # no spin-waiting between runs: idle ORT threads would take CPU from whatever runs next
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(*x):
        outs = sess.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, x)})
        outs = tuple(torch.from_numpy(o) for o in outs)
        return outs[0] if len(outs) == 1 else outs

    return _Runner("onnxruntime", run, keep=(keep, sess))


@engine("onnxruntime")
def _onnxruntime(model: nn.Module, input_shape: tuple) -> nn.Module:
    from torchslim.export.onnx import export_onnx

    tmp = tempfile.TemporaryDirectory()
    return onnx_runner(export_onnx(model, inputs.from_shape(input_shape), Path(tmp.name) / "model.onnx"), keep=tmp)


def available() -> list[str]:
    """Engines this installation can run."""
    names = ["eager", "compile"]
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        names.append("onnxruntime")
    except ImportError:
        pass
    return names


def build(name: str, model: nn.Module, input_shape: tuple) -> nn.Module:
    """The model wrapped for engine ``name`` (not ``auto``: see :func:`choose`)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; use one of {sorted(ENGINES)} or 'auto'")
    return ENGINES[name](model, input_shape)


def choose(
    model: nn.Module, input_shape: tuple, big_batch: int = 256, min_run_time: float = 0.5
) -> tuple[nn.Module, dict[str, dict[str, float]]]:
    """``auto``: the fastest engine at batch 1 + ``big_batch`` and every candidate's timings (ms);
    an engine that fails on the model is reported with its error and skipped."""
    from torchslim.measure.latency import latency_ms

    timings: dict[str, dict] = {}
    best, best_ms = None, float("inf")
    for name in available():
        try:
            run = build(name, model, input_shape)
            t = {f"b{b}": round(latency_ms(run, input_shape, b, min_run_time=min_run_time), 4) for b in (1, big_batch)}
        except Exception as e:  # noqa: BLE001 - an engine that cannot run this model is not a candidate
            timings[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            continue
        timings[name] = t
        if sum(t.values()) < best_ms:
            best, best_ms = run, sum(t.values())
    if best is None:
        raise RuntimeError(f"no engine runs this model: {timings}")
    return best, timings
