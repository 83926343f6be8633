"""Packed sparse layers: CSR storage and a sparse or dense kernel, chosen by measurement.

Storage per layer: ``crow`` (rows + 1, int32), ``col`` (nnz, int16 when the
row length fits, else int32), ``values`` (nnz, float32), ``bias``. For a
weight with density d the file holds about ``(4 + 2) * d * n`` bytes instead
of ``4 * n`` (6.7x smaller at 92 % sparsity).

Training: with gradients enabled the weight is rebuilt differentiably from
``values`` (``index_add`` into a dense buffer), so a packed model fine-tunes
with its sparsity pattern fixed: only the stored nonzeros learn.

Execution: ``kernel="dense"`` expands the weight once, at load, and runs the
ordinary dense op. ``kernel="sparse"``: a linear layer multiplies with
``torch.sparse_csr``; a convolution runs a direct sparse kernel (numba) that never
forms im2col patches: with the input batch-last, ``x (C, H, W, N)``, every stored
weight ``v = W[o, c, ky, kx]`` adds ``v * x[c, i s + ky d - p, j s + kx d - p, :]``
to output row ``y[o, i, j, :]``, and for stride 1 the ``(j, n)`` run of a row is one
contiguous vector of ``W_out * N`` floats, so the work is ``nnz * H_out`` vector
updates (``nnz / (C_out C_in k^2)`` of the dense MACs) at any batch size; rows are
tiled so a tile of output stays in L1 (Park et al. 2017, "Faster CNNs with Direct
Sparse Convolutions"). Its output is the batch-last tensor viewed as NCHW; a plain
call returns it NCHW-contiguous (one copy), the ``eager`` engine passes it on as
it is (``batch_last = True``), so consecutive sparse convolutions and the pooling
between them never transpose. Without numba (or off the CPU) the convolution
falls back to ``W (C_out, C_in*k*k) @ unfold(x)`` with ``torch.sparse_csr``.
:func:`rule_kernel` picks the kernel by a rule (density, size, grouping and whether
numba is installed), so the same recipe gives the same file bytes on every run;
:func:`choose_kernel` (``kernel="measure"``, ``torchslim tune``) times both kernels
on the layer's real input shape and keeps the faster one. The choice and its
reason (the rule or the timings) are stored in the file's architecture spec.
"""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.runtime._layout import conv_geometry, dense_module, linear_geometry, set_conv_geometry
from torchslim.runtime._numba import match_torch_threads, module_kernels
from torchslim.runtime.base import RuntimeLayer, as_op, bias_counts, set_op_spec, tracing
from torchslim.runtime.timing import choose_module_kernel

KERNELS = ("sparse", "dense")

_NUMBA: dict | bool | None = None


def _numba_kernels() -> dict | bool:
    """The compiled direct sparse convolution, or False without numba."""
    return module_kernels(__name__)


def _build() -> dict | bool:
    """Compile this module's kernels (:func:`_numba_kernels` calls it once, numba installed)."""
    import numpy as np
    from numba import njit, prange

    @njit(parallel=True, cache=True, nogil=True)
    def sparse_conv(x, crow, cc, cy, cx, vals, bias, sh, sw, dh, dw, ph, pw, ho, wo):
        # x (C, H, W, N) float32 -> out (O, Ho, Wo, N); CSR row o holds (channel, ky, kx, value).
        # The input is zero-padded once, so every conv is a valid one. Per pass over a run of
        # output, 4 stored weights (one load and store of y per 4 multiply-adds). A run is one
        # output row's (j, n) (contiguous for stride 1), or, stride 1 both ways and rows shorter
        # than 64 values (batch 1), a whole tile of rows at once ("wide" rows, computed in a
        # buffer of input-row width: y[i, j] for j in [wo, W) reads into the next input row and
        # is dropped when the tile is copied out), so short rows still give long vector loops.
        c_, h0, w0, nb = x.shape
        if ph or pw:  # zeros written by hand: an np.zeros here runs as a parfor, 100+ us at 64x18x18
            hp, wp = h0 + 2 * ph, (w0 + 2 * pw) * nb
            xp = np.empty((c_, hp, w0 + 2 * pw, nb), np.float32)
            rows_p, rows_x = xp.reshape(c_, hp, wp), x.reshape(c_, h0, w0 * nb)
            for c in prange(c_):
                for i in range(hp):
                    r = rows_p[c, i]
                    if i < ph or i >= ph + h0:
                        for t in range(wp):
                            r[t] = 0
                    else:
                        for t in range(pw * nb):
                            r[t] = 0
                            r[wp - 1 - t] = 0
                        r[pw * nb : (pw + w0) * nb] = rows_x[c, i - ph]
        else:
            xp = x
        h, w = xp.shape[1], xp.shape[2]
        no = crow.shape[0] - 1
        out = np.empty((no, ho, wo, nb), np.float32)
        wide = sh == 1 and sw == 1 and wo * nb < 64 and wo < w
        wb = w if wide else wo
        rows = max(1, 4096 // (wb * nb))  # output rows per tile: 16 kB of output
        xf = xp.reshape(c_, h * w * nb)
        of = out.reshape(no, ho * wo * nb)
        tiles = (ho + rows - 1) // rows
        for idx in prange(no * tiles):
            o, i0 = idx // tiles, (idx % tiles) * rows
            i1 = min(ho, i0 + rows)
            q0, q1 = crow[o], crow[o + 1]
            if wide:
                tile = np.empty(((i1 - i0 - 1) * w + wo) * nb, np.float32)
            else:
                tile = of[o, i0 * wo * nb : i1 * wo * nb]
            for t in range(tile.shape[0]):
                tile[t] = bias[o]
            n_ = tile.shape[0] if wide else wo * nb
            for i in range(i0, i0 + 1 if wide else i1):
                y = tile[(i - i0) * wo * nb : (i - i0) * wo * nb + n_]
                for q in range(q0, q1 - 3, 4):
                    x0, x1 = xf[cc[q]], xf[cc[q + 1]]
                    x2, x3 = xf[cc[q + 2]], xf[cc[q + 3]]
                    r0 = (i * sh + cy[q] * dh) * w * nb + cx[q] * dw * nb
                    r1 = (i * sh + cy[q + 1] * dh) * w * nb + cx[q + 1] * dw * nb
                    r2 = (i * sh + cy[q + 2] * dh) * w * nb + cx[q + 2] * dw * nb
                    r3 = (i * sh + cy[q + 3] * dh) * w * nb + cx[q + 3] * dw * nb
                    v0, v1, v2, v3 = vals[q], vals[q + 1], vals[q + 2], vals[q + 3]
                    if sw == 1:  # one contiguous run: slices, not offsets, so it vectorizes
                        s0, s1, s2, s3 = x0[r0 : r0 + n_], x1[r1 : r1 + n_], x2[r2 : r2 + n_], x3[r3 : r3 + n_]
                        for t in range(n_):
                            y[t] += v0 * s0[t] + v1 * s1[t] + v2 * s2[t] + v3 * s3[t]
                    else:
                        for j in range(wo):
                            d = j * sw * nb
                            ys = y[j * nb : j * nb + nb]
                            s0, s1 = x0[r0 + d : r0 + d + nb], x1[r1 + d : r1 + d + nb]
                            s2, s3 = x2[r2 + d : r2 + d + nb], x3[r3 + d : r3 + d + nb]
                            for t in range(nb):
                                ys[t] += v0 * s0[t] + v1 * s1[t] + v2 * s2[t] + v3 * s3[t]
                for q in range(q1 - (q1 - q0) % 4, q1):  # the last 1-3 weights one by one
                    xq, v = xf[cc[q]], vals[q]
                    r = (i * sh + cy[q] * dh) * w * nb + cx[q] * dw * nb
                    if sw == 1:
                        s0 = xq[r : r + n_]
                        for t in range(n_):
                            y[t] += v * s0[t]
                    else:
                        for j in range(wo):
                            d = j * sw * nb
                            ys, s0 = y[j * nb : j * nb + nb], xq[r + d : r + d + nb]
                            for t in range(nb):
                                ys[t] += v * s0[t]
            if wide:  # the tile's rows, input-row width apart, to the output
                for i in range(i1 - i0):
                    of[o, (i0 + i) * wo * nb : (i0 + i + 1) * wo * nb] = tile[i * w * nb : (i * w + wo) * nb]
        return out

    @njit(parallel=True, cache=True, nogil=True)
    def sparse_linear(xt, crow, col, vals, bias):
        # xt (K, N) float32 (the input transposed) -> out (N, O); an output row's N values are
        # accumulated over its stored weights, 4 at a time, in one contiguous vector. Outputs in
        # blocks of 16 per task: one accumulator allocation per block, not per output.
        nb, no = xt.shape[1], crow.shape[0] - 1
        out = np.empty((nb, no), np.float32)
        x1 = xt[:, 0]
        for blk in prange((no + 15) // 16):
            acc = np.empty(nb, np.float32)
            for o in range(16 * blk, min(no, 16 * blk + 16)):
                q0, q1 = crow[o], crow[o + 1]
                if nb == 1:  # a dot product of gathered inputs, 4 partial sums (no dependency chain)
                    s0 = s1 = s2 = s3 = np.float32(0)
                    for q in range(q0, q1 - 3, 4):
                        s0 += vals[q] * x1[col[q]]
                        s1 += vals[q + 1] * x1[col[q + 1]]
                        s2 += vals[q + 2] * x1[col[q + 2]]
                        s3 += vals[q + 3] * x1[col[q + 3]]
                    for q in range(q1 - (q1 - q0) % 4, q1):
                        s0 += vals[q] * x1[col[q]]
                    out[0, o] = bias[o] + ((s0 + s1) + (s2 + s3))
                    continue
                for t in range(nb):
                    acc[t] = bias[o]
                for q in range(q0, q1 - 3, 4):
                    x0, xa, x2, x3 = xt[col[q]], xt[col[q + 1]], xt[col[q + 2]], xt[col[q + 3]]
                    v0, v1, v2, v3 = vals[q], vals[q + 1], vals[q + 2], vals[q + 3]
                    for t in range(nb):
                        acc[t] += v0 * x0[t] + v1 * xa[t] + v2 * x2[t] + v3 * x3[t]
                for q in range(q1 - (q1 - q0) % 4, q1):
                    xq, v = xt[col[q]], vals[q]
                    for t in range(nb):
                        acc[t] += v * xq[t]
                for t in range(nb):
                    out[t, o] = acc[t]
        return out

    return {"conv": sparse_conv, "linear": sparse_linear}


def _kernels(t: torch.Tensor) -> dict | bool:
    k = _numba_kernels() if t.device.type == "cpu" and t.dtype == torch.float32 else False
    if k:
        match_torch_threads()
    return k


def _csr(weight2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    cols = weight2d.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        csr = weight2d.detach().to_sparse_csr()
    col_dtype = torch.int16 if cols <= 32767 else torch.int32
    return csr.crow_indices().to(torch.int32), csr.col_indices().to(col_dtype), csr.values().clone()


class _SparseBase(RuntimeLayer):
    """Shared CSR state. Subclasses define the 2-D weight shape and the op."""

    rows: int
    cols: int

    def _init_storage(self, nnz: int, bias: bool, kernel: str, timing: dict | None, bits: int = 0) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}; use one of {list(KERNELS)}")
        if not 0 <= bits <= 8:
            raise ValueError(f"bits={bits}; use 0 (float values) or 1..8 (codebook)")
        self.kernel = kernel
        self.timing = dict(timing or {})
        self.bits = bits
        self.nnz = nnz
        self.register_buffer("crow", torch.zeros(self.rows + 1, dtype=torch.int32))
        self.register_buffer("col", torch.zeros(nnz, dtype=torch.int16 if self.cols <= 32767 else torch.int32))
        if bits:  # values = codebook[codes], codes bit-packed (Deep Compression)
            self.register_buffer("codes", torch.zeros(math.ceil(nnz * bits / 8), dtype=torch.uint8))
            self.codebook = nn.Parameter(torch.zeros(2**bits))
        else:
            self.values = nn.Parameter(torch.zeros(nnz))
        self.bias = nn.Parameter(torch.zeros(self.rows)) if bias else None
        self._cache: tuple | None = None
        self._numba_ops: tuple | None = None
        set_op_spec(self)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name == "kernel" and "op_state" in self.__dict__:  # the op's spec follows a new kernel choice
            set_op_spec(self)

    def entropy_streams(self) -> list[tuple[str, object, dict]]:
        """Codebook indices of the stored values (when weight-shared), row lengths, and column
        indices as gaps within each row, as Deep Compression codes positions."""
        from torchslim.runtime.codebook import code_stream

        streams = [code_stream(self.codes, self.bits, self.nnz)] if self.bits else []
        crow, col = self.crow.long().numpy(), self.col.long().numpy()
        streams.append(("crow", np.diff(crow), {"kind": "csr_crow", "n": self.crow.numel() - 1}))
        dtype = str(self.col.dtype).replace("torch.", "")
        streams.append(("col", csr_gaps(crow, col), {"kind": "csr_col", "n": self.col.numel(), "dtype": dtype}))
        return streams

    def weight_counts(self) -> tuple[int, int]:
        """(dense weights + bias, stored nonzeros + nonzero bias) for measurement."""
        b, bnz = bias_counts(self.bias)
        return self.rows * self.cols + b, self.nnz + bnz

    def macs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """Dense: every (output, input) pair; effective: one MAC per stored nonzero and output position."""
        positions = y.numel() // self.rows  # N (* H_out * W_out)
        return positions * self.rows * self.cols, positions * self.nnz

    def lowered(self, **info) -> nn.Module:
        """The layer scattering the stored values into a dense weight in the graph (exact; ONNX has
        no standard op for CSR weights, and ONNX Runtime folds the scatter at session creation)."""
        from torchslim.runtime.codebook import unpack_bits
        from torchslim.runtime.compact import CodebookWeight, ScatterWeight, computed_layer

        if self.bits:
            codes = unpack_bits(self.codes, self.bits, self.nnz)
            values = CodebookWeight(codes, self.bits, self.codebook, (self.nnz,))
        else:
            values = self.values.detach()
        shape = (self.rows, self.cols)
        if hasattr(self, "kernel_size"):  # a conv's weight: (out, in / groups, kh, kw)
            shape = (self.rows, self.cols // (self.kernel_size[0] * self.kernel_size[1]), *self.kernel_size)
        return computed_layer(self, ScatterWeight(self.flat_positions().cpu(), values, shape), self.bias)

    def flat_positions(self) -> torch.Tensor:
        """Index of each stored value in the row-major (rows, cols) weight: ``row * cols + col``."""
        lengths = (self.crow[1:] - self.crow[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(self.rows, device=self.crow.device), lengths)
        return rows * self.cols + self.col.long()

    def expanded_numel(self) -> int:
        return self.rows * self.cols

    def as_dense(self) -> nn.Module | None:
        """The dense layer where the measured kernel is ``dense`` (the sparse kernels are kept)."""
        return self.to_float() if self.kernel == "dense" else None

    def validate(self) -> None:
        """CSR invariants: ``crow`` starts at 0, never decreases, ends at nnz; ``col`` in [0, cols) and
        strictly increasing within each row; codes (if any) hold nnz b-bit values."""
        crow, col = self.crow.long(), self.col.long()
        if crow.numel() != self.rows + 1 or col.numel() != self.nnz:
            raise ValueError(
                f"crow has {crow.numel()} entries (want {self.rows + 1}), col {col.numel()} (want {self.nnz})"
            )
        if int(crow[0]) != 0 or int(crow[-1]) != self.nnz or bool((crow[1:] < crow[:-1]).any()):
            raise ValueError("crow must start at 0, never decrease and end at nnz")
        if col.numel() and (int(col.min()) < 0 or int(col.max()) >= self.cols):
            raise ValueError(f"col holds indices outside [0, {self.cols})")
        rows = torch.repeat_interleave(torch.arange(self.rows), crow[1:] - crow[:-1])
        if col.numel() > 1 and bool(((col[1:] <= col[:-1]) & (rows[1:] == rows[:-1])).any()):
            raise ValueError("col must increase strictly within each row")
        if self.bits and self.codes.numel() != math.ceil(self.nnz * self.bits / 8):
            raise ValueError(f"codes hold {self.codes.numel()} bytes, want {math.ceil(self.nnz * self.bits / 8)}")
        if not self.bits and self.values.numel() != self.nnz:
            raise ValueError(f"values hold {self.values.numel()} entries, want {self.nnz}")

    def _storage_args(self) -> dict:
        return dict(nnz=self.nnz, bias=self.bias is not None, kernel=self.kernel, timing=self.timing, bits=self.bits)

    def tune(self, example: torch.Tensor) -> str:
        """Re-time this layer's kernels on ``example`` (:func:`choose_kernel`); returns the choice."""
        return choose_kernel(self, example)

    def _trainable(self) -> nn.Parameter:
        return self.codebook if self.bits else self.values

    def value_tensor(self) -> torch.Tensor:
        """The nnz stored values (``codebook[codes]`` for codebook layers; differentiable)."""
        if self.bits:
            from torchslim.runtime.codebook import unpack_bits

            return self.codebook[unpack_bits(self.codes, self.bits, self.nnz)]
        return self.values

    def set_codebook(self, codes: torch.Tensor, codebook: torch.Tensor, bits: int) -> None:
        """Replace float values by ``bits``-bit codes into ``codebook`` (weight sharing)."""
        from torchslim.runtime.codebook import pack_bits

        if codes.numel() != self.nnz:
            raise ValueError(f"{codes.numel()} codes for {self.nnz} stored values")
        if not self.bits:
            del self.values
        self.bits = bits
        self.register_buffer("codes", pack_bits(codes, bits))
        self.codebook = nn.Parameter(codebook.detach().clone().float())
        self._cache = None

    def set_weight(self, weight2d: torch.Tensor) -> None:
        crow, col, values = _csr(weight2d)
        if self.bits:
            raise ValueError("set_weight works on float-valued sparse layers; this one holds a codebook")
        self.crow = crow
        self.col = col
        self.values = nn.Parameter(values)
        self.nnz = values.numel()
        self._cache = None

    def _index_parts(self, col: torch.Tensor) -> tuple:
        """What the numba kernel reads of a stored weight's column index."""
        return (col,)

    def _kernel_operands(self) -> tuple:
        """CSR row pointers, :meth:`_index_parts` of every stored weight, the values and the bias as
        numpy arrays for the numba kernels (cached with the weights' and the bias's versions)."""
        p, b = self._trainable(), self.bias
        key = (self.bits, p._version, p.data_ptr(), None if b is None else (b._version, b.data_ptr()))
        if self._numba_ops is None or self._numba_ops[0] != key:
            vals = self.value_tensor().detach().float()
            bias = b.detach().float() if b is not None else torch.zeros(self.rows)
            arrays = (self.crow.long(), *self._index_parts(self.col.long()), vals, bias)
            self._numba_ops = (key, tuple(t.contiguous().numpy() for t in arrays))
        return self._numba_ops[1]

    def _training(self) -> bool:
        return torch.is_grad_enabled() and self._trainable().requires_grad

    def train_weight(self) -> torch.Tensor:
        """Dense (rows, cols) weight, differentiable w.r.t. ``values`` (zeros stay zero)."""
        v = self.value_tensor()
        w = torch.zeros(self.rows * self.cols, device=v.device, dtype=v.dtype)
        return w.index_add(0, self.flat_positions(), v).view(self.rows, self.cols)

    def _operand(self) -> torch.Tensor:
        """The CSR tensor (sparse kernel) or the dense 2-D weight (dense kernel), cached."""
        p = self._trainable()
        key = (self.kernel, self.bits, p._version, p.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                csr = torch.sparse_csr_tensor(
                    self.crow, self.col.to(torch.int32), self.value_tensor().detach(), (self.rows, self.cols)
                )
                op = csr if self.kernel == "sparse" else csr.to_dense()
            self._cache = (key, op)
        return self._cache[1]

    def dense_weight(self) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.sparse_csr_tensor(
                self.crow, self.col.to(torch.int32), self.value_tensor().detach(), (self.rows, self.cols)
            ).to_dense()

    def _mm(self, x2d: torch.Tensor) -> torch.Tensor:
        """(rows, cols) @ x2d with x2d of shape (cols, M)."""
        op = self._operand()
        if self.kernel == "sparse":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.sparse.mm(op, x2d)
        return op @ x2d


class SparseLinear(_SparseBase):
    """Linear layer with a CSR weight (out_features x in_features)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nnz: int,
        bias: bool = True,
        kernel: str = "dense",
        timing: dict | None = None,
        bits: int = 0,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.rows, self.cols = out_features, in_features
        self._init_storage(nnz, bias, kernel, timing, bits)

    def spec_args(self) -> dict:
        return dict(**linear_geometry(self), **self._storage_args())

    @classmethod
    def from_dense(cls, m: nn.Linear, kernel: str = "dense") -> SparseLinear:
        w = m.weight.detach()
        new = cls(m.in_features, m.out_features, int(torch.count_nonzero(w)), m.bias is not None, kernel)
        new.set_weight(w)
        if m.bias is not None:
            new.bias.data.copy_(m.bias.detach())
        return new

    def to_float(self) -> nn.Linear:
        return dense_module(self, self.dense_weight(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch.export / torch.compile of an eval model: one custom op that runs the CSR kernels (it has
        # no autograd: a model in train mode traces the dense form below)
        if tracing() and not self.training:
            return as_op(self, x)
        if self._training():
            return F.linear(x, self.train_weight(), self.bias)
        if self.kernel == "dense":
            return F.linear(x, self._operand(), self.bias)
        lead = x.shape[:-1]
        xt = x.detach().reshape(-1, self.in_features).t().contiguous()  # (in, N)
        k = _kernels(x) if not (torch.is_grad_enabled() and x.requires_grad) else False
        if k:
            y = torch.from_numpy(k["linear"](xt.numpy(), *self._kernel_operands()))
            return y.reshape(*lead, self.out_features)
        # (N, out) contiguous: a transposed view would send the next linear layer down a slow path
        y = self._mm(x.reshape(-1, self.in_features).t().contiguous()).t().contiguous()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, nnz={self.nnz}, bits={self.bits}, kernel={self.kernel}"


class SparseConv2d(_SparseBase):
    """Conv2d with a CSR weight (C_out x C_in*k_h*k_w); groups=1 for the sparse kernel."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list,
        stride: list,
        padding: list,
        dilation: list,
        groups: int,
        nnz: int,
        bias: bool = True,
        kernel: str = "dense",
        timing: dict | None = None,
        bits: int = 0,
    ) -> None:
        super().__init__()
        if groups != 1 and kernel == "sparse":
            raise ValueError("the sparse conv kernel supports groups=1 only; use kernel='dense'")
        set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self._init_storage(nnz, bias, kernel, timing, bits)
        self.batch_last = False  # only on a copy from with_layout(): return the direct kernel's layout

    def spec_args(self) -> dict:
        return dict(**conv_geometry(self), **self._storage_args())

    def with_layout(self, layout: str) -> SparseConv2d | None:
        """A copy that returns the direct sparse kernel's batch-last (H, W, C, N) maps as they are
        (``layout="batch_last"``), which the next sparse conv reads without a transpose."""
        if layout != "batch_last" or self.kernel != "sparse":
            return None
        new = copy.copy(self)
        new.batch_last = True
        return new

    @classmethod
    def from_dense(cls, m: nn.Conv2d, kernel: str = "dense") -> SparseConv2d:
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ValueError(f"SparseConv2d needs numeric zero padding, got {m.padding!r}/{m.padding_mode}")
        w = m.weight.detach().reshape(m.out_channels, -1)
        new = cls(
            m.in_channels,
            m.out_channels,
            list(m.kernel_size),
            list(m.stride),
            list(m.padding),
            list(m.dilation),
            m.groups,
            int(torch.count_nonzero(w)),
            m.bias is not None,
            kernel,
        )
        new.set_weight(w)
        if m.bias is not None:
            new.bias.data.copy_(m.bias.detach())
        return new

    def to_float(self) -> nn.Conv2d:
        return dense_module(self, self.dense_weight(), self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tracing() and not self.training and not self.batch_last:  # one custom op (see SparseLinear)
            return as_op(self, x)
        if self._training() or self.kernel == "dense":
            w = self.train_weight() if self._training() else self._operand()
            w = w.reshape(self.out_channels, self.in_channels // self.groups, *self.kernel_size)
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if x.dim() != 4 or x.shape[1] != self.in_channels:  # the numba kernel indexes channels unchecked
            raise ValueError(
                f"SparseConv2d: input of shape {tuple(x.shape)}, the layer reads (N, {self.in_channels}, H, W); "
                "the model's layers do not fit together (a file whose geometry lies, or the wrong input)"
            )
        n, _, h, w_ = x.shape
        kh, kw = self.kernel_size
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w_ + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        k = _kernels(x) if not (torch.is_grad_enabled() and x.requires_grad) else False
        if k:
            xb = x.detach().permute(1, 2, 3, 0).contiguous()  # (C, H, W, N); no copy when batch-last
            out = k["conv"](xb.numpy(), *self._kernel_operands(), *self.stride, *self.dilation, *self.padding, ho, wo)
            y = torch.from_numpy(out).permute(3, 0, 1, 2)
            return y if self.batch_last else y.contiguous()
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C*k*k, L)
        y = self._mm(cols.transpose(0, 1).reshape(self.cols, -1))  # (C_out, N*L)
        y = y.reshape(self.out_channels, n, ho * wo).transpose(0, 1).reshape(n, self.out_channels, ho, wo)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y.contiguous()

    def _index_parts(self, col: torch.Tensor) -> tuple:
        """A stored weight's column as (input channel, kernel row, kernel column)."""
        kk = self.kernel_size[0] * self.kernel_size[1]
        return col // kk, col % kk // self.kernel_size[1], col % self.kernel_size[1]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"nnz={self.nnz}, kernel={self.kernel}"
        )


SPARSE_MAX_DENSITY = 0.12  # above it the dense BLAS / oneDNN kernels win
SPARSE_MIN_WEIGHTS = 4096  # below it a layer's call overhead dominates (LeNet-5's 500 x 10 head: dense 2x faster)
SPARSE_MAX_CONV_MACS = 16_000_000  # dense MACs per sample above which oneDNN's conv beats the direct sparse one


def rule_kernel(module: _SparseBase, example: torch.Tensor | None = None) -> str:
    """The default kernel, by a rule rather than a timing (same seed, same file bytes): ``sparse``
    when density ``nnz / (rows * cols)`` <= ``SPARSE_MAX_DENSITY`` and the dense layer holds at
    least ``SPARSE_MIN_WEIGHTS`` weights; a convolution also needs groups == 1, numba installed (the
    direct sparse kernel; the unfold fallback is not faster) and at most ``SPARSE_MAX_CONV_MACS``
    dense MACs per sample on ``example`` (its input: one sample): at 224 x 224 oneDNN's convs are
    ~25x faster per MAC than the direct sparse kernel, so resnet50 at 90 % sparsity ran 0.37x of
    float all-sparse, while LeNet-sized convs (1.6 M MACs) run 3-8x faster sparse. Sets
    ``module.kernel`` and ``module.timing`` (``{"rule": reason}``)."""
    import importlib.util

    weights = module.rows * module.cols
    density = module.nnz / max(1, weights)
    reason = f"density {density:.3f}, {weights} weights"
    conv = isinstance(module, SparseConv2d)
    macs = None
    if conv and example is not None:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
        ho = (example.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (example.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        macs = weights * max(0, ho) * max(0, wo)
        reason += f", {macs} dense MACs"
    if conv and module.groups != 1:
        kernel, reason = "dense", "grouped conv"
    elif conv and importlib.util.find_spec("numba") is None:
        kernel, reason = "dense", "numba not installed"
    elif conv and (macs is None or macs > SPARSE_MAX_CONV_MACS):
        kernel = "dense"
    else:
        kernel = "sparse" if density <= SPARSE_MAX_DENSITY and weights >= SPARSE_MIN_WEIGHTS else "dense"
    module.kernel, module.timing, module._cache = kernel, {"rule": reason}, None
    return kernel


def choose_kernel(
    module: _SparseBase, example: torch.Tensor, batches: tuple[int, ...] = (1, 256), min_run_time: float = 0.2
) -> str:
    """Time the sparse and dense kernels on ``example`` (one input sample, batch dim 1)
    repeated to each batch size; keep ``sparse`` only when it is faster at every size (:func:`pick`).
    A convolution's direct sparse kernel is timed as the ``eager`` engine runs it, batch-last in and
    out (:class:`SparseConv2d`); the dense kernel on NCHW tensors.

    Side effects: sets ``module.kernel`` and ``module.timing`` ({"b1": {"sparse": ms, "dense": ms}, ...}).
    """
    if isinstance(module, SparseConv2d) and module.groups != 1:
        module.kernel, module.timing = "dense", {"reason": "grouped conv"}
        return "dense"
    if isinstance(module, SparseConv2d):
        saved, module.batch_last = module.batch_last, True
        try:
            layouts = {"sparse": lambda x: x.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2)}
            choose_module_kernel(module, KERNELS, "dense", example, batches, min_run_time, layouts)
        finally:
            module.batch_last = saved
    else:
        choose_module_kernel(module, KERNELS, "dense", example, batches, min_run_time)
    module._cache = None
    return module.kernel


def csr_gaps(crow: np.ndarray, col: np.ndarray) -> np.ndarray:
    """CSR column indices as gaps within each row (Deep Compression's relative positions): a row's
    first entry keeps its column, every next one stores the distance to the previous entry."""
    gaps = col.astype(np.int64).copy()
    gaps[1:] -= col[:-1]
    starts = crow[:-1].astype(np.int64)
    gaps[starts[starts < len(col)]] = col[starts[starts < len(col)]]  # empty rows share the next start
    return gaps


def csr_cols(crow: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`csr_gaps`: a running sum restarted at each row."""
    lens = np.diff(crow.astype(np.int64))
    cs = np.cumsum(gaps.astype(np.int64))
    before = np.concatenate([[0], cs])[crow[:-1].astype(np.int64)]  # running sum just before each row
    return cs - np.repeat(before, lens)
