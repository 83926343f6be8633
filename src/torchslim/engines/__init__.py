"""Inference engines: what runs a converted model fast, for the user's own code and for every table.

``fast = torchslim.engine(model)`` returns the object to call instead of ``model`` (an ``nn.Module``
in eval mode that shares the model's tensors; the model itself is left unchanged).
``torchslim eval``, ``torchslim.report`` and the benchmarks time exactly that object.

* ``eager`` (the default): torchslim's own runtime layers in plain PyTorch (numba / int8 / sparse
  kernels) on a view of the model (:mod:`torchslim.engines.views`): packed layers whose kernel is
  the dense op on their expanded weight run as that plain layer; each BatchNorm that reads only a
  float conv's / linear's output is folded into it (equal up to float32 rounding, so logits move by
  ~1e-6 relative and a near-tie prediction may flip); non-overlapping max pooling runs as a maximum
  of strided views or inside the epilogue of the packed layer before it, which may also write the
  next packed layer's input words; the model runs channels-last (NHWC) where its convolutions are
  oneDNN's or read NHWC themselves, and direct sparse convolutions pass their batch-last maps on.
  The runner's ``layout`` says which layout runs. Measured on an AMD EPYC (AVX-512) at batch 256:
  float vgg_small 107 -> 81 ms, its filter-pruned form 84 -> 51 ms, Tucker 128 -> 78 ms, CP
  307 -> 103 ms.
* ``pytorch``: the model's modules exactly as they are (the plain-PyTorch reference).
* ``compile``: ``torch.compile`` (inductor, CPU) of the same model.
* ``onnxruntime``: the model exported by :func:`torchslim.export.onnx.export_onnx` run by ONNX Runtime.
* ``auto``: each available engine timed on the model at batch 1 and ``big_batch`` (the sum of the
  two medians), the fastest returned; :func:`choose` also returns the timings.

An engine is a class with a ``name`` and ``build(model, input_shape)``; :func:`register_engine`
adds one. This package imports the runtime, ``core`` and (for ``onnxruntime``) the exporter: no
training, data, recipes or method family.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from torchslim.core import inputs
from torchslim.engines.views import (
    ChannelsLast,
    batch_last_view,
    channels_last_view,
    dense_view,
    folded_bn,
    fused_epilogues,
    prefers_channels_last,
)
from torchslim.runtime.pool import fast_pooling

ENGINES: dict[str, Engine] = {}


class Runner(nn.Module):
    """An engine's callable as a module (no parameters of its own: runs on the CPU, without
    gradients). ``name`` is the engine's; ``layout`` the activation layout it runs (eager only)."""

    def __init__(self, name: str, fn: Callable, keep: object = None, layout: str | None = None) -> None:
        super().__init__()
        self.name, self.fn, self._keep, self.layout = name, fn, keep, layout
        self.training = False

    def train(self, mode: bool = True) -> Runner:
        """Only the runner's own flag: an engine runs inference, and the modules it wraps are shared
        with the user's model, which ``evaluate``'s ``train(was_training)`` must not switch to
        training mode (Dropout on, BatchNorm statistics updated)."""
        self.training = mode
        return self

    def forward(self, *x):
        with torch.no_grad():  # inference only: the fused kernels write into their outputs
            return self.fn(*x)


class Engine(ABC):
    """One way to run a converted model. Subclasses set ``name`` and implement :meth:`build`."""

    name: str = ""

    def available(self) -> bool:
        """Whether this installation can run the engine."""
        return True

    @abstractmethod
    def build(self, model: nn.Module, input_shape: tuple) -> Runner:
        """The runner of ``model`` in this engine (inputs of ``input_shape`` without the batch)."""


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Class decorator: make the engine available under ``cls.name``."""
    ENGINES[cls.name] = cls()
    return cls


@register_engine
class Eager(Engine):
    name = "eager"

    def build(self, model: nn.Module, input_shape: tuple) -> Runner:
        view = fast_pooling(fused_epilogues(folded_bn(dense_view(model.eval()))))
        if prefers_channels_last(view):
            return Runner("eager", ChannelsLast(channels_last_view(view)), layout="channels_last")
        if (bl := batch_last_view(view, input_shape)) is not view:
            return Runner("eager", bl, layout="batch_last")
        return Runner("eager", view, layout="contiguous")


@register_engine
class PyTorch(Engine):
    name = "pytorch"

    def build(self, model: nn.Module, input_shape: tuple) -> Runner:
        return Runner("pytorch", model.eval())


@register_engine
class Compile(Engine):
    name = "compile"

    def build(self, model: nn.Module, input_shape: tuple) -> Runner:
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile workers left running
        compiled = torch.compile(model.eval(), dynamic=False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs.call(compiled, inputs.from_shape(input_shape))  # compile now, not inside a timing
        return Runner("compile", compiled)


@register_engine
class OnnxRuntime(Engine):
    name = "onnxruntime"

    def available(self) -> bool:
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def build(self, model: nn.Module, input_shape: tuple) -> Runner:
        from torchslim.export.onnx import export_onnx

        tmp = tempfile.TemporaryDirectory()
        path = export_onnx(model, inputs.from_shape(input_shape), Path(tmp.name) / "model.onnx")
        return onnx_runner(path, keep=tmp)


def onnx_runner(path: str | os.PathLike, keep: object = None) -> Runner:
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

    return Runner("onnxruntime", run, keep=(keep, sess))


def available() -> list[str]:
    """Engines this installation can run (``auto``'s candidates; ``pytorch`` is the reference)."""
    return [n for n, e in ENGINES.items() if n != "pytorch" and e.available()]


def build(name: str, model: nn.Module, input_shape: tuple) -> Runner:
    """The model wrapped for engine ``name`` (not ``auto``: see :func:`choose`)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; use one of {sorted(ENGINES)} or 'auto'")
    return ENGINES[name].build(model, input_shape)


def choose(
    model: nn.Module, input_shape: tuple, big_batch: int = 256, min_run_time: float = 0.5
) -> tuple[Runner, dict[str, dict[str, float]]]:
    """``auto``: the fastest engine at batch 1 + ``big_batch`` and every candidate's timings (ms);
    an engine that fails on the model is reported with its error and skipped."""
    from torchslim.runtime.timing import time_ms

    timings: dict[str, dict] = {}
    best, best_ms = None, float("inf")
    for name in available():
        try:
            run = build(name, model, input_shape)
            t = {}
            for b in (1, big_batch):
                x = inputs.from_shape(input_shape, b, random=True)
                t[f"b{b}"] = round(time_ms(run, x, min_run_time, torch.get_num_threads()), 4)
        except Exception as e:  # noqa: BLE001 - an engine that cannot run this model is not a candidate
            timings[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
            continue
        timings[name] = t
        if sum(t.values()) < best_ms:
            best, best_ms = run, sum(t.values())
    if best is None:
        raise RuntimeError(f"no engine runs this model: {timings}")
    return best, timings


def engine(model: nn.Module, name: str = "eager", example_inputs: inputs.Inputs | None = None) -> Runner:
    """The fast inference object for a converted model: ``fast = torchslim.engine(model); fast(x)``.

    Args:
        name: ``eager`` (torchslim's runtime, the default), ``pytorch``, ``compile``,
            ``onnxruntime`` or ``auto`` (the fastest of them on this model, timed here).
        example_inputs: an input batch (or a tuple for several inputs); by default the model's own:
            the example given to ``compress_``, the input shape in the ``.slim`` file it was loaded
            from, or a registry model's.
    """
    if example_inputs is None:
        from torchslim.core.surgery import example_inputs as own_inputs

        example_inputs = own_inputs(model)
    shape = inputs.check_shape(inputs.shape_of(inputs.check(example_inputs)))
    if name == "auto":
        return choose(model, shape)[0]
    return build(name, model, shape)
