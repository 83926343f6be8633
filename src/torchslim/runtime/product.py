"""Product-quantized layers (Gong et al. 2014; Jegou et al. 2011): each weight row is split
into ``m`` sub-vectors of length ``d``; sub-space ``j`` has its own codebook of ``k``
d-dimensional codewords and every row stores one ``log2 k``-bit index per sub-space.

Weight ``W (rows, m*d)``: ``W[r, j*d:(j+1)*d] = codebooks[j, codes[r, j]]``.
Storage: ``rows * m * log2(k) / 8`` bytes of indices + ``4 * m * k * d`` of codebooks.

Two kernels, chosen by measurement:

* ``dense``: expand the weight once (cached) and run the dense op;
* ``lut`` (Linear only): per input, a table ``T[n, j, c] = <x_n[j], codebooks[j, c]>``
  (``m * k`` inner products of length d) and each output is a sum of m table
  look-ups, ``y[n, r] = sum_j T[n, j, codes[r, j]]`` (Wu et al. 2016, Q-CNN's inference):
  ``m * (k * d + rows)`` operations per sample instead of ``rows * m * d``. With
  ``k <= 16`` a sub-space's table is one 16-float vector register, and 16 rows' look-ups
  are one register permute (``vpermps`` on AVX-512; two 8-wide permutes and a blend on
  AVX2), the float analogue of fast-scan PQ's byte shuffles (André et al. 2015): exact
  float table entries, so the layer computes the same function as the dense one up to
  the order of the float sums (fast-scan's 8-bit tables would change the outputs). The
  table is per sample, so the dense GEMM wins at large batches: the layer runs the
  table kernel up to ``lut_batch`` samples (the largest batch at which it measured
  faster) and the dense weight above. Numba compiles the kernel for the CPU it runs
  on; without numba or AVX2, or with ``k > 16``, a pure-torch table path runs instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.runtime import timing as _timing
from torchslim.runtime._layout import conv_geometry, dense_macs, dense_module, linear_geometry, set_conv_geometry
from torchslim.runtime._numba import match_torch_threads, module_kernels, target_features
from torchslim.runtime.base import RuntimeLayer
from torchslim.runtime.codebook import code_stream, pack_bits, unpack_bits

PQ_KERNELS = ("dense", "lut")
LUT_BATCHES = (1, 4, 16, 64, 256)  # where choose_pq_kernel times the two kernels

_NUMBA: dict | bool | None = None


def _simd() -> str | None:
    """The vector ISA numba compiles for here: the host's, or ``NUMBA_CPU_FEATURES`` when numba is
    told to compile for another CPU (``NUMBA_CPU_NAME``; None if that names no features)."""
    feats = target_features()
    return "avx512f" if "avx512f" in feats else "avx2" if "avx2" in feats else None


def _numba_kernels() -> dict | bool:
    """The compiled table kernel for this CPU's vector ISA, or False (no numba, no AVX2)."""
    return module_kernels(__name__)


def _build() -> dict | bool:
    """Compile this module's kernels (:func:`_numba_kernels` calls it once, numba installed)."""
    import numpy as np
    from llvmlite import ir
    from numba import njit, prange, types
    from numba.extending import intrinsic

    simd = _simd()
    if simd is None:
        return False
    f32, i32, i8 = ir.FloatType(), ir.IntType(32), ir.IntType(8)

    def vec_ptr(context, builder, aty, arr, off, elt, n):
        data = context.make_array(aty)(context, builder, arr).data
        return builder.bitcast(builder.gep(data, [off]), ir.VectorType(elt, n).as_pointer())

    def permute(builder, table, idx, n):  # table[idx] for n lanes of a 16-float table
        if simd == "avx512f":
            ty = ir.FunctionType(ir.VectorType(f32, 16), [ir.VectorType(f32, 16), ir.VectorType(i32, 16)])
            return builder.call(
                builder.module.declare_intrinsic("llvm.x86.avx512.permvar.sf.512", fnty=ty), [table, idx]
            )
        ty = ir.FunctionType(ir.VectorType(f32, 8), [ir.VectorType(f32, 8), ir.VectorType(i32, 8)])
        fn = builder.module.declare_intrinsic("llvm.x86.avx2.permps", fnty=ty)
        lo = builder.shuffle_vector(table, table, ir.Constant(ir.VectorType(i32, 8), list(range(8))))
        hi = builder.shuffle_vector(table, table, ir.Constant(ir.VectorType(i32, 8), list(range(8, 16))))
        upper = builder.icmp_unsigned(">", idx, ir.Constant(ir.VectorType(i32, 8), [7] * 8))
        return builder.select(upper, builder.call(fn, [hi, idx]), builder.call(fn, [lo, idx]))

    @intrinsic
    def lut16_add(typingctx, acc, a_off, tab, t_off, codes, c_off):
        # acc[a_off : a_off + 16] += tab[t_off + codes[c_off : c_off + 16]], tab a 16-float table
        def codegen(context, builder, signature, args):
            acc_v, ao, tab_v, to, codes_v, co = args
            aty, _, tty, _, cty, _ = signature.args
            table = builder.load(vec_ptr(context, builder, tty, tab_v, to, f32, 16), align=4)
            for h in range(0, 16, 16 if simd == "avx512f" else 8):
                n = 16 if simd == "avx512f" else 8
                pc = vec_ptr(context, builder, cty, codes_v, builder.add(co, ir.Constant(co.type, h)), i8, n)
                idx = builder.zext(builder.load(pc, align=1), ir.VectorType(i32, n))
                pa = vec_ptr(context, builder, aty, acc_v, builder.add(ao, ir.Constant(ao.type, h)), f32, n)
                builder.store(builder.fadd(builder.load(pa, align=4), permute(builder, table, idx, n)), pa, align=4)
            return context.get_dummy_value()

        return types.void(acc, a_off, tab, t_off, codes, c_off), codegen

    @intrinsic
    def axpy16(typingctx, dst, d_off, src, s_off, a):
        # dst[d_off : d_off + 16] += a * src[s_off : s_off + 16] (one register; no index checks)
        def codegen(context, builder, signature, args):
            dst_v, do, src_v, so, av = args
            dty, _, sty, _, _ = signature.args
            pd = vec_ptr(context, builder, dty, dst_v, do, f32, 16)
            ps = vec_ptr(context, builder, sty, src_v, so, f32, 16)
            splat = builder.insert_element(ir.Constant(ir.VectorType(f32, 16), None), av, ir.Constant(i32, 0))
            splat = builder.shuffle_vector(splat, splat, ir.Constant(ir.VectorType(i32, 16), [0] * 16))
            prod = builder.fmul(splat, builder.load(ps, align=4))
            builder.store(builder.fadd(builder.load(pd, align=4), prod), pd, align=4)
            return context.get_dummy_value()

        return types.void(dst, d_off, src, s_off, a), codegen

    def lut_linear(x, cbt, codes_t, bias):
        # x (N, m*d); cbt (m, d, 16) codebooks transposed (codewords past k are zeros);
        # codes_t (m, R16) uint8, rows padded to a multiple of 16 -> (N, rows)
        m, d, _ = cbt.shape
        r16 = codes_t.shape[1]
        out = np.empty((x.shape[0], bias.shape[0]), np.float32)
        cflat, bflat = codes_t.ravel(), cbt.ravel()
        for n in prange(x.shape[0]):
            table = np.zeros(m * 16, np.float32)
            xn = x[n]
            for j in range(m):  # T[j, :] = sum_e x[j d + e] cbt[j, e, :]: 16-wide multiply-adds
                for e in range(d):
                    axpy16(table, j * 16, bflat, (j * d + e) * 16, xn[j * d + e])
            acc = np.zeros(r16, np.float32)
            for r0 in range(0, r16, 64):  # up to 4 independent 16-row sums in flight
                blocks = min(4, (r16 - r0) // 16)
                for j in range(m):
                    for u in range(blocks):
                        lut16_add(acc, r0 + 16 * u, table, j * 16, cflat, j * r16 + r0 + 16 * u)
            for r in range(out.shape[1]):
                out[n, r] = acc[r] + bias[r]
        return out

    return {
        "lut": njit(parallel=True, cache=True, nogil=True)(lut_linear),
        "lut1": njit(cache=True, nogil=True)(lut_linear),  # batch 1: no thread launch
        "simd": simd,
    }


class _ProductBase(RuntimeLayer):
    rows: int
    cols: int

    def _init_pq(self, sub_dim: int, bits: int, bias: bool, kernel: str, timing: dict | None) -> None:
        if self.cols % sub_dim:
            raise ValueError(f"row length {self.cols} is not a multiple of sub_dim={sub_dim}")
        if kernel not in PQ_KERNELS:
            raise ValueError(f"kernel={kernel!r}; use one of {list(PQ_KERNELS)}")
        self.sub_dim, self.bits, self.kernel = sub_dim, bits, kernel
        self.timing = dict(timing or {})
        self.m = self.cols // sub_dim
        self.register_buffer("codes", torch.zeros(math.ceil(self.rows * self.m * bits / 8), dtype=torch.uint8))
        self.codebooks = nn.Parameter(torch.zeros(self.m, 2**bits, sub_dim))
        self.bias = nn.Parameter(torch.zeros(self.rows)) if bias else None
        self._cache: tuple | None = None
        self._lut_ops: tuple | None = None

    def set_codes(self, codes: torch.Tensor, codebooks: torch.Tensor) -> None:
        """``codes (rows, m)`` int, ``codebooks (m, k, d)``."""
        self.codes = pack_bits(codes, self.bits)
        self.codebooks = nn.Parameter(codebooks.detach().clone().float())
        self._cache = self._lut_ops = None

    def indices(self) -> torch.Tensor:
        return unpack_bits(self.codes, self.bits, self.rows * self.m).view(self.rows, self.m)

    def entropy_streams(self) -> list[tuple[str, object, dict]]:
        """The sub-vector codes as ``bits``-bit symbols."""
        return [code_stream(self.codes, self.bits, self.rows * self.m)]

    def weight_counts(self) -> tuple[int, int]:
        b = self.bias.numel() if self.bias is not None else 0
        return self.rows * self.cols + b, int(torch.count_nonzero(self.weight2d())) + b

    def expanded_numel(self) -> int:
        return self.rows * self.cols

    def macs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        return dense_macs(self, y)

    def lowered(self, **info) -> nn.Module:
        """The layer computing its weight from the packed codes in the graph (exact; ONNX Runtime folds
        it to the dense weight at session creation, the file keeps the codes and codebooks)."""
        from torchslim.runtime.compact import ProductWeight, computed_layer

        shape = (
            (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
            if hasattr(self, "kernel_size")
            else (self.rows, self.cols)
        )
        return computed_layer(self, ProductWeight(self.indices(), self.bits, self.codebooks, shape), self.bias)

    def as_dense(self) -> nn.Module | None:
        """The dense layer with the codewords expanded, where the layer runs its expanded weight (no
        lookup-table kernel)."""
        return dense_module(self, self.weight2d(), self.bias) if getattr(self, "kernel", "dense") == "dense" else None

    def weight2d(self) -> torch.Tensor:
        """(rows, cols) weight; differentiable w.r.t. the codebooks when training."""

        def build():
            idx = self.indices()  # (rows, m)
            j = torch.arange(self.m).expand_as(idx)
            return self.codebooks[j, idx].reshape(self.rows, self.cols)  # (rows, m, d) -> (rows, cols)

        if torch.is_grad_enabled() and self.codebooks.requires_grad:
            return build()
        key = (self.codebooks._version, self.codebooks.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, build(), self.indices())
        return self._cache[1]


class ProductLinear(_ProductBase):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        sub_dim: int,
        bits: int,
        bias: bool = True,
        kernel: str = "dense",
        timing: dict | None = None,
        lut_batch: int | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.rows, self.cols = out_features, in_features
        self._init_pq(sub_dim, bits, bias, kernel, timing)
        if lut_batch is not None and (not isinstance(lut_batch, int) or lut_batch < 1):
            raise ValueError(f"lut_batch={lut_batch!r}; use a positive batch size or None (every batch)")
        self.lut_batch = lut_batch  # the table kernel up to this batch size, the dense weight above

    def spec_args(self) -> dict:
        return dict(
            **linear_geometry(self),
            sub_dim=self.sub_dim,
            bits=self.bits,
            bias=self.bias is not None,
            kernel=self.kernel,
            timing=self.timing,
            lut_batch=self.lut_batch,
        )

    def _lut_operands(self) -> tuple:
        """Codebooks transposed to (m, d, 16), codes transposed to (m, rows rounded up to 16) bytes and
        the bias, as numpy arrays for the table kernel (cached; rebuilt when the codebooks or the bias
        change in place; :meth:`set_codes` drops the cache)."""
        b = self._parameters["bias"]
        key = (self._parameters["codebooks"]._version, None if b is None else b._version)
        if self._lut_ops is None or self._lut_ops[0] != key:
            cbt = torch.zeros(self.m, self.sub_dim, 16)
            cbt[:, :, : 2**self.bits] = self.codebooks.detach().float().transpose(1, 2)
            codes = torch.zeros(self.m, -(-self.rows // 16) * 16, dtype=torch.uint8)
            codes[:, : self.rows] = self.indices().t().to(torch.uint8)
            bias = b.detach().float() if b is not None else torch.zeros(self.rows)
            self._lut_ops = (key, tuple(t.contiguous().numpy() for t in (cbt, codes, bias)))
        return self._lut_ops[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = torch.is_grad_enabled() and (self.codebooks.requires_grad or x.requires_grad)
        n = x.numel() // self.in_features
        if self.kernel == "dense" or training or (self.lut_batch is not None and n > self.lut_batch):
            return F.linear(x, self.weight2d(), self.bias)
        lead = x.shape[:-1]
        k = _numba_kernels() if x.device.type == "cpu" and x.dtype == torch.float32 and self.bits <= 4 else False
        if k:
            if n > 1:  # batch 1 runs the serial kernel
                match_torch_threads()
            y = k["lut1" if n == 1 else "lut"](x.detach().reshape(n, -1).contiguous().numpy(), *self._lut_operands())
            return torch.from_numpy(y).reshape(*lead, self.out_features)
        self.weight2d()  # fills the cached indices
        idx = self._cache[2]  # (rows, m)
        xs = x.reshape(-1, self.m, self.sub_dim)  # (N, m, d)
        table = torch.einsum("nmd,mkd->nmk", xs, self.codebooks.detach())  # (N, m, k)
        y = table.gather(2, idx.t().unsqueeze(0).expand(xs.shape[0], -1, -1))  # (N, m, rows)
        y = y.sum(1)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def tune(self, example: torch.Tensor) -> str:
        """Re-time the lookup-table and dense kernels on ``example`` (:func:`choose_pq_kernel`)."""
        return choose_pq_kernel(self, example)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, sub_dim={self.sub_dim}, bits={self.bits}, kernel={self.kernel}"
        )


class ProductConv2d(_ProductBase):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list,
        stride: list,
        padding: list,
        dilation: list,
        groups: int,
        sub_dim: int,
        bits: int,
        bias: bool = True,
    ) -> None:
        super().__init__()
        set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self._init_pq(sub_dim, bits, bias, "dense", None)

    def spec_args(self) -> dict:
        return dict(**conv_geometry(self), sub_dim=self.sub_dim, bits=self.bits, bias=self.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight2d().reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, sub_dim={self.sub_dim}, "
            f"bits={self.bits}"
        )


def choose_pq_kernel(
    module: ProductLinear,
    example: torch.Tensor,
    batches: tuple[int, ...] = LUT_BATCHES,
    min_run_time: float = 0.2,
) -> str:
    """Time the table kernel (at every batch) and the dense weight on ``example`` repeated to each of
    ``batches``; keep ``lut`` when it is strictly faster at the smallest batch, with ``lut_batch`` the
    largest batch up to which it is faster at every measured size (the dense weight runs above).

    Side effects: sets ``module.kernel``, ``module.lut_batch`` and ``module.timing``."""

    def run(kernel: str):
        def call(x: torch.Tensor) -> torch.Tensor:
            module.kernel, module.lut_batch = kernel, None
            return module(x)

        return call

    timing = _timing.time_candidates({k: run(k) for k in PQ_KERNELS}, example, batches, min_run_time)
    wins = [int(b[1:]) for b in sorted(timing, key=lambda b: int(b[1:]))]
    lut_batch = None
    for b in wins:
        if not timing[f"b{b}"]["lut"] < timing[f"b{b}"]["dense"]:
            break
        lut_batch = b
    module.kernel = "dense" if lut_batch is None else "lut"
    module.lut_batch = None if lut_batch is None or lut_batch == max(wins) else lut_batch
    module.timing = timing
    return module.kernel
