"""The one contract every deploy-time (packed) layer follows.

A runtime layer is one class that owns everything about its format, so that
adding a format is one new file in ``runtime/``:

* ``spec_args()`` / ``from_spec(args)``: its constructor arguments as JSON, and
  the validated inverse used when a ``.slim`` file is loaded (``export/spec.py``
  looks the class up here by name; only registered classes can be built);
* ``macs(x, y)``: (dense MACs, effective MACs) of one forward call, used by
  ``measure/counts.py`` (effective MACs skip work the kernel really skips);
* ``weight_counts()``: (logical weights, nonzero weights) it represents, which
  differ from its storage (a codebook layer stores 2**b floats and represents
  every weight);
* ``lowered(**info)``: the same function in plain torch ops that ONNX and
  ``torch.export`` understand (``export/onnx.py``): the exact dense expansion for
  codebook, product, sparse and binary layers, a QuantizeLinear / DequantizeLinear
  graph for int8;
* ``takes_channels_last``, ``fused(pool, reader)``, ``accepts_words()``, ``with_layout(layout)``:
  what the ``eager`` engine (:mod:`torchslim.engines`) may do with the layer: run the model NHWC
  around it, let it pool and write the next layer's packed input in its epilogue, pass its own
  output layout on. The engine only calls these; it sets nothing on a layer;
* ``as_dense()``: a plain ``nn.Conv2d`` / ``nn.Linear`` with the same function (up to
  float rounding) where the layer's own kernel is nothing but the dense op on its
  expanded weight (codebook layers, a sparse or product layer whose measured kernel
  is ``dense``, binary weights on float inputs), else None: the ``eager`` engine runs
  that module instead, so BatchNorm folding and channels-last reach those layers
  too (the file stays compressed; the speed is the float model's, not less).

Subclasses register themselves by being defined (``__init_subclass__``); names
that start with ``_`` are shared bases and are not registered. This package
imports torch and numpy only: no training code, no method family.
"""

from __future__ import annotations

import json
from abc import ABCMeta, abstractmethod
from typing import Any

import torch
import torch.nn as nn

_LAYERS: dict[str, type[RuntimeLayer]] = {}


class RuntimeLayer(nn.Module, metaclass=ABCMeta):
    """Base class of the deploy-time layers (see the module docstring for the contract)."""

    fx_leaf = True  # graph walkers (torchslim.core.fold.LeafTracer) treat the layer as one call

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            if cls.__name__ in _LAYERS and _LAYERS[cls.__name__] is not cls:
                raise ValueError(f"runtime layer {cls.__name__!r} is already registered")
            _LAYERS[cls.__name__] = cls

    @abstractmethod
    def spec_args(self) -> dict:
        """Constructor arguments as JSON (the inverse of :meth:`from_spec`)."""

    @classmethod
    def from_spec(cls, args: dict) -> RuntimeLayer:
        """A fresh layer from :meth:`spec_args` (tensors are filled by the state dict afterwards)."""
        return cls(**args)

    def macs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """(dense MACs, effective MACs) of the call that mapped ``x`` to ``y``; 0 for elementwise layers."""
        return 0, 0

    def validate(self) -> None:
        """Check the loaded tensors against the spec (index ranges, stream lengths); raise ValueError
        naming the tensor. Called by ``load`` before the layer runs: a file's indices are never
        trusted (an out-of-range CSR row pointer crashes the process inside a sparse kernel)."""

    def expanded_numel(self) -> int:
        """Elements of the float weight the layer may expand to at run time (caches, dense kernels):
        what ``load`` bounds against the file's size. 0 for layers that never expand."""
        return 0

    @abstractmethod
    def lowered(self, **info: Any) -> nn.Module:
        """The layer in plain torch ops (exporters see no packed storage or custom kernel). ``info``
        holds ``input_qparams``: (scale, zero point) of the quantized tensor the layer receives at run
        time from the layer before it, or None (a float input)."""

    takes_channels_last: bool = False
    """The layer's kernel reads and writes channels-last (NHWC) maps itself, so the engine may run
    the model NHWC around it (all other packed convolutions read NCHW)."""

    def fused(self, pool: tuple[int, int] | None = None, reader: RuntimeLayer | None = None) -> RuntimeLayer | None:
        """A copy of the layer that also applies the non-overlapping max pooling of window ``pool``
        that follows it, and / or returns ``reader``'s packed input words instead of its float output
        (``reader.accepts_words()``); None where it cannot do all that is asked (the default). The
        copy shares the layer's tensors; the engine replaces the pooling by ``nn.Identity``."""
        return None

    def accepts_words(self) -> bool:
        """The layer can take packed sign words from the layer before it (see :meth:`fused`)."""
        return False

    def with_layout(self, layout: str) -> RuntimeLayer | None:
        """A copy of the layer whose output stays in its kernel's own ``layout`` (``"batch_last"``:
        (H, W, C, N) maps of the direct sparse conv), or None (the default: NCHW out)."""
        return None

    def entropy_streams(self) -> list[tuple[str, Any, dict]]:
        """The integer streams of the layer that ``save(..., entropy="huffman")`` may Huffman-code:
        ``(tensor name within the layer, symbols as a 1-D int64 numpy array, description)``, the
        description's ``kind`` naming how the file rebuilds the tensor from the symbols (``codes``:
        b-bit codes packed with ``pack_bits``; ``csr_crow``: row lengths of a CSR row pointer;
        ``csr_col``: column gaps within each row). Default: none."""
        return []

    def as_dense(self) -> nn.Module | None:
        """The plain layer the ``eager`` engine runs in this one's place, or None (the default: the
        layer's own kernel does better than the dense op)."""
        return None

    def weight_counts(self) -> tuple[int, int]:
        """(weights, nonzero weights) the layer represents, bias included."""
        own = list(self.parameters(recurse=False))
        return sum(p.numel() for p in own), sum(int(torch.count_nonzero(p)) for p in own)


def runtime_layer(name: str) -> type[RuntimeLayer] | None:
    """The registered runtime layer class called ``name``, or None."""
    _load_formats()
    return _LAYERS.get(name)


def runtime_layers() -> dict[str, type[RuntimeLayer]]:
    """Every registered runtime layer class by name."""
    _load_formats()
    return dict(_LAYERS)


def _load_formats() -> None:
    import torchslim.runtime  # noqa: F401  - the package imports every format module


def bias_counts(bias: torch.Tensor | None) -> tuple[int, int]:
    """(numel, nonzeros) of an optional bias."""
    if bias is None:
        return 0, 0
    return bias.numel(), int(torch.count_nonzero(bias))


def tracing() -> bool:
    """Inside ``torch.export`` or ``torch.compile`` (dynamo): fake tensors, no data pointers, so a
    layer with its own kernels runs as the custom op ``torchslim::runtime_layer`` instead."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def set_op_spec(layer: RuntimeLayer) -> None:
    """The op's ``spec`` for ``layer``: its type, :meth:`~RuntimeLayer.spec_args` and the names of
    its tensors (buffers and parameters that are set), made once when the layer is built (dynamo
    cannot trace ``json.dumps``)."""
    names = [
        n for n, t in [*layer.named_buffers(recurse=False), *layer.named_parameters(recurse=False)] if t is not None
    ]
    layer.op_spec = json.dumps({"type": type(layer).__name__, "state": names, **layer.spec_args()}, sort_keys=True)
    layer.op_state = tuple(names)


def as_op(layer: RuntimeLayer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` as one ``torchslim::runtime_layer`` node: what ``torch.export`` records and
    ``torch.compile`` calls without a graph break; the exported program runs the layer's own kernels."""
    return torch.ops.torchslim.runtime_layer(x, [getattr(layer, n) for n in layer.op_state], layer.op_spec)


_OP_LAYERS: dict[tuple, RuntimeLayer] = {}  # (spec, tensor storages): a layer built around the op's tensors


@torch.library.custom_op("torchslim::runtime_layer", mutates_args=())
def runtime_layer_op(x: torch.Tensor, state: list[torch.Tensor], spec: str) -> torch.Tensor:
    """The runtime layer ``spec`` describes, holding ``state``, applied to ``x``: the same kernels and
    result as the layer's own forward (int8 outputs dequantized: the next int8 layer quantizes them
    again with the same scale and zero point, which gives back the same codes). The layer is built
    once per set of tensors and kept, with its caches."""
    key = (spec, *(t.data_ptr() for t in state))
    layer = _OP_LAYERS.get(key)
    if layer is None:
        args = json.loads(spec)
        names = args.pop("state")
        # built outside inference mode even when called inside it: the layer's caches key on its
        # tensors' version counters, which inference tensors do not have
        with torch.inference_mode(False), torch.no_grad():
            layer = runtime_layer(args.pop("type")).from_spec(args)
            for name, t in zip(names, state):
                getattr(layer, name).copy_(t)
        if len(_OP_LAYERS) > 4096:
            _OP_LAYERS.clear()
        _OP_LAYERS[key] = layer.eval()
    with torch.no_grad():
        y = layer(x)
    return (y.dequantize() if y.is_quantized else y).contiguous()


@runtime_layer_op.register_fake
def _runtime_layer_shape(x: torch.Tensor, state: list[torch.Tensor], spec: str) -> torch.Tensor:
    args = json.loads(spec)
    if "out_features" in args:
        return x.new_empty(*x.shape[:-1], args["out_features"])
    (kh, kw), (sh, sw), (ph, pw) = args["kernel_size"], args["stride"], args["padding"]
    dh, dw = args.get("dilation", (1, 1))
    ho = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return x.new_empty(x.shape[0], args["out_channels"], ho, wo)
