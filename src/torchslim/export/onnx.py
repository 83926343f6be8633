"""ONNX export of converted models: every runtime layer lowers itself (``RuntimeLayer.lowered``).

* physically smaller dense models (filter pruning, slimming, low-rank, folded BatchNorm): plain ONNX;
* uniform int8 layers: a QDQ graph (QuantizeLinear / DequantizeLinear around Conv / Gemm) that
  ONNX Runtime runs with its int8 kernels; the weights are stored as int8 initializers
  (``DequantizeLinear(int8 W)``), so the file stays about as small as the int8 weights;
* codebook, sparse and binary layers: the dense layer whose weight the graph computes from the
  compact tensors (:mod:`torchslim.runtime.compact`: Gather of packed codes, Scatter of sparse
  values, packed sign bits), which ONNX Runtime folds to the dense weight when it creates the
  session: the file stays near the ``.slim`` size and runs at dense speed (ONNX has no standard
  operator for CSR, codebook or xnor-popcount kernels); product-quantized layers: their dense
  expansion.

The exported graph has a dynamic batch dimension, opset 17, and passes ``onnx.checker``.
Needs the ``onnx`` extra: ``pip install "torchslim[onnx]"``.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from torchslim.core import inputs
from torchslim.runtime.base import RuntimeLayer

OPSET = 17


def lowered_model(model: nn.Module, example: inputs.Inputs) -> nn.Module:
    """A copy of ``model`` with every runtime layer replaced by its plain-torch form."""
    quantized_in: dict[str, tuple[float, int]] = {}  # layer -> qparams of the quantized tensor it receives

    def grab(name: str):
        def hook(mod, args):
            if isinstance(args[0], torch.Tensor) and args[0].is_quantized:
                quantized_in[name] = (float(args[0].q_scale()), int(args[0].q_zero_point()))

        return hook

    hooks = [m.register_forward_pre_hook(grab(n)) for n, m in model.named_modules() if isinstance(m, RuntimeLayer)]
    try:
        with torch.no_grad():
            inputs.call(model.eval(), example)  # which int8 layers receive an int8 tensor
    finally:
        for h in hooks:
            h.remove()
    # the copy takes each runtime layer's lowered form in its place (packed caches are never copied)
    memo = {
        id(m): m.lowered(input_qparams=quantized_in.get(n))
        for n, m in model.named_modules()
        if isinstance(m, RuntimeLayer)
    }
    return copy.deepcopy(model, memo).eval()


def export_onnx(
    model: nn.Module,
    example_inputs: inputs.Inputs,
    path: str | os.PathLike,
    *,
    opset: int = OPSET,
    int8_initializers: bool = True,
) -> Path:
    """Write ``model`` (converted) as ONNX to ``path`` with a dynamic batch dimension.

    Args:
        example_inputs: one input batch (any batch size), or a tuple of batches for a model with
            several inputs (named ``input0``, ``input1``, ... in the graph).
        int8_initializers: store the weights of int8 layers as int8 tensors (exact).
    """
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install 'torchslim[onnx]'") from None
    path = Path(path)
    x = inputs.to(inputs.check(example_inputs), "cpu")
    args = x if isinstance(x, tuple) else (x,)
    low = lowered_model(model.cpu(), x)
    with torch.no_grad():
        y = inputs.call(low, x)
    n_out = len(y) if isinstance(y, tuple) else 1
    outputs = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    names = ["input"] if len(args) == 1 else [f"input{i}" for i in range(len(args))]
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                low,
                args,
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=names,
                output_names=outputs,
                dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]},
                # keep the compact subgraphs (Gather of codes, Scatter of sparse values, packed signs):
                # folding them here would store the dense weights; ONNX Runtime folds them at load
                do_constant_folding=False,
            )
        except torch.onnx.errors.OnnxExporterError as e:  # an operator ONNX cannot express at this input
            tmp.unlink(missing_ok=True)
            raise ValueError(
                f"ONNX cannot express this model at input {inputs.shape_of(example_inputs)}: "
                f"{str(e).splitlines()[0][:200]} (e.g. adaptive pooling to a size that does not divide its "
                "input: export at the input size the model is deployed at)"
            ) from None
    graph = onnx.load(str(tmp))
    if int8_initializers:
        _fold_weight_quantization(graph)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp))
    os.replace(tmp, path)
    return path


def _fold_weight_quantization(graph) -> None:
    """``QuantizeLinear(float W initializer)`` -> an int8 initializer (the same codes, 1/4 the bytes)."""
    import numpy as np
    from onnx import helper, numpy_helper

    g = graph.graph
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
    casts = {n.output[0]: n for n in g.node if n.op_type == "Cast"}

    def value(name):
        """The constant behind ``name`` (through Identity and Cast nodes: the graph is exported
        unfolded), or None."""
        while name in alias:
            name = alias[name]
        if name in casts:
            v = value(casts[name].input[0])
            to = next(a.i for a in casts[name].attribute if a.name == "to")
            return None if v is None else v.astype(helper.tensor_dtype_to_np_dtype(to))
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        return None

    keep = []
    for node in g.node:
        w = value(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if w is None or w.ndim < 2:
            keep.append(node)
            continue
        scale, zero = value(node.input[1]), value(node.input[2])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * w.ndim
        shape[axis] = -1
        lo, hi = (-128, 127) if zero.dtype == np.int8 else (0, 255)
        q = np.clip(np.rint(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.int64), lo, hi)
        g.initializer.append(numpy_helper.from_array(q.astype(zero.dtype), node.output[0]))
    used = {i for n in keep for i in n.input} | {o.name for o in g.output}
    keep = [n for n in keep if n.op_type not in ("Constant", "Identity") or n.output[0] in used]
    del g.node[:]
    g.node.extend(keep)
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
