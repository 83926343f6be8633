"""Bit-packed binary layers: xor + popcount GEMMs (Rastegari et al. 2016, XNOR-Net;
Courbariaux et al. 2016, BNN).

Signs are packed 64 to a word along the input channels (bit 1 = -1, bit 0 = +1; tail
bits 0 in both operands), so for ``n`` real bits ``a . b = n - 2 popcount(a XOR b)``.
A conv packs its input once per position and gathers the ``kh x kw`` patch of words
(im2col on words, 1/32 of the float im2col), then one xnor GEMM. Zero padding is
neither +1 nor -1: padded positions are packed as +1 and corrected exactly by
subtracting ``conv(padding mask, sum_c sign(W))``, computed once per input size.
Output: ``y = scale_o * (K_p *) dot + bias_o`` where ``scale`` holds the weight scale
(BWN alpha) and any BatchNorm folded in, and ``K`` is XNOR-Net's input scale map.

Two optional float parts from the binary-training literature, stored with the layer:
``threshold`` (ReActNet's RSign, Liu et al. 2020): the input is binarized as
``sign(x_c - t_c)`` with a learned per-channel threshold (and K is taken of ``|x - t|``);
``shortcut`` (Bi-Real Net, Liu et al. 2018): ``y + P(x)``, a real-valued shortcut from
the layer's float input, where ``P`` averages ``stride x stride`` windows and repeats the
channels ``out / in`` times (ReActNet's duplication), so a binary conv block carries
the real activations forward; the convolution itself stays xnor-popcount.

The CPU kernel is numba: ``llvm.ctpop`` through a small ``@intrinsic`` lowers to the
hardware popcount (``vpopcntq`` on AVX-512 CPUs, ``popcnt`` elsewhere); compiled
kernels are cached on disk. Without numba a pure-torch reference runs the same
arithmetic (byte lookup-table popcount): exact, slower. On a GPU the bits save memory,
not time: the layer unpacks them to +/-1 in the input's dtype and runs the dense op.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torchslim.runtime._layout import dense_macs, dense_module, linear_geometry, set_conv_geometry
from torchslim.runtime._numba import match_torch_threads, module_kernels
from torchslim.runtime.base import RuntimeLayer, as_op, set_op_spec, tracing
from torchslim.runtime.compact import SignWeight
from torchslim.runtime.pool import StridedMaxPool2d

_SHIFTS = torch.arange(64, dtype=torch.int64)
_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Pack the signs of the last dim into int64 words: (..., C) -> (..., ceil(C / 64)); bit 1 = negative."""
    c = x.shape[-1]
    bits = (x < 0).to(torch.int64)
    pad = (-c) % 64
    if pad:
        bits = F.pad(bits, (0, pad))
    bits = bits.view(*x.shape[:-1], -1, 64)
    return (bits << _SHIFTS.to(x.device)).sum(-1)  # distinct bits: no carries, exact in int64


def unpack_signs(words: torch.Tensor, c: int) -> torch.Tensor:
    """Inverse of :func:`pack_signs`: (..., W) -> (..., c) of +1/-1 floats."""
    bits = (words.unsqueeze(-1) >> _SHIFTS.to(words.device)) & 1
    return 1.0 - 2.0 * bits.flatten(-2)[..., :c].float()


def popcount_xor_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``out[i, j] = popcount(a[i] XOR b[j])`` summed over words, in pure torch (int32)."""
    table = _BYTE_POPCOUNT.to(a.device)
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    for i in range(0, a.shape[0], 128):
        x = torch.bitwise_xor(a[i : i + 128, None, :], b[None, :, :])
        out[i : i + 128] = table[x.contiguous().view(torch.uint8).long()].sum(-1, dtype=torch.int32)
    return out


_NUMBA: dict | bool | None = None


def _numba_kernels() -> dict | bool:
    """The compiled numba kernels (pack, xnor GEMM, direct binary conv), or False without numba."""
    return module_kernels(__name__)


def _build() -> dict | bool:
    """Compile this module's kernels (:func:`_numba_kernels` calls it once, numba installed)."""
    from torchslim.runtime._binary_kernels import kernels

    return kernels()


def _kernels(t: torch.Tensor) -> dict | bool:
    k = _numba_kernels() if t.device.type == "cpu" else False
    if k:
        match_torch_threads()
    return k


def _unsigned(t: torch.Tensor):
    """Packed words as unsigned numpy words of their width (int32 -> uint32, int64 -> uint64)."""
    return t.contiguous().numpy().view("uint32" if t.dtype == torch.int32 else "uint64")


def word_dtype(channels: int) -> torch.dtype:
    """The conv kernels' word for ``channels`` input channels: 32 bits up to 32 channels (a 64-bit word
    would be half empty, and an AVX-512 popcount takes 16 32-bit words at once), else 64."""
    return torch.int32 if channels <= 32 else torch.int64


def _n_words(channels: int) -> int:
    return math.ceil(channels / (8 * word_dtype(channels).itemsize))


def _grid(b: int, h: int, w: int, ph: int, pw: int, channels: int) -> torch.Tensor:
    """A zeroed padded word grid (B, H + 2 ph, W + 2 pw, words) for ``channels``: padding packs as +1."""
    return torch.zeros(b, h + 2 * ph, w + 2 * pw, _n_words(channels), dtype=word_dtype(channels))


def pack_rows(x: torch.Tensor) -> torch.Tensor:
    """:func:`pack_signs` of a 2-D tensor, with the numba kernel when available."""
    k = _kernels(x)
    if not k:
        return pack_signs(x)
    out = torch.empty(x.shape[0], math.ceil(x.shape[1] / 64), dtype=torch.int64)
    k["pack"](x.detach().float().contiguous().numpy(), out.numpy().view("uint64"))
    return out


def popcount_xor(a: torch.Tensor, b: torch.Tensor, b_t: torch.Tensor | None = None) -> torch.Tensor:
    """``popcount(a[i] XOR b[j])`` summed over words, (M, W) x (N, W) int64 -> (M, N) int32.
    ``b_t``: ``b`` transposed to (W, N), contiguous (the kernel's layout; layers cache it)."""
    k = _kernels(a)
    if not k:
        return popcount_xor_reference(a, b)
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int32)
    k["gemm"](_unsigned(a), _unsigned(b.t().contiguous() if b_t is None else b_t), out.numpy())
    return out


class _PackedBase(RuntimeLayer):
    """Shared state: packed weight words, per-output scale and bias, the XNOR input scaling
    flag, and ``binary_input``: with float activations (BinaryConnect, BWN) there is no xnor
    product, and the bits are expanded to a +/-1 float weight once (a storage format)."""

    def _init_packed(
        self, rows: int, words: int, input_scaling: bool, binary_input: bool, threshold: bool, inputs: int
    ) -> None:
        if (input_scaling or threshold) and not binary_input:
            raise ValueError("input_scaling (XNOR-Net's K) and threshold need binary_input=True")
        self.input_scaling, self.binary_input = input_scaling, binary_input
        self.register_buffer("words", torch.zeros(rows, words, dtype=torch.int64))
        self.register_buffer("scale", torch.ones(rows))
        self.register_buffer("bias", torch.zeros(rows))
        self.register_buffer("threshold", torch.zeros(inputs) if threshold else None)
        self._float: tuple | None = None
        self._kernel_words: tuple | None = None

    def validate(self) -> None:
        """One finite scale per output row and one finite threshold per input channel: a file whose
        per-channel vectors were swapped between layers of other widths loaded (the tensors follow
        the file) and the kernels read past their ends (NaN outputs)."""
        inputs = getattr(self, "in_channels", getattr(self, "in_features", None))
        for key, n in (("scale", self.words.shape[0]), ("threshold", inputs)):
            t = getattr(self, key)
            if t is None:
                continue
            if t.numel() != n:
                raise ValueError(f"tensor {key!r} holds {t.numel()} values for {n} channels")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"tensor {key!r} holds a non-finite value")

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """``x - t`` per input channel (RSign), or ``x`` without a threshold."""
        if self.threshold is None:
            return x
        return x - self.threshold.to(x.dtype).view((1, -1) + (1,) * (x.dim() - 2))

    def weight_counts(self) -> tuple[int, int]:
        n = self.n_bits * self.words.shape[0]
        return n, n

    def expanded_numel(self) -> int:
        return self.n_bits * self.words.shape[0]

    def macs(self, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
        """Binary MACs (one xnor-popcount bit per weight and output), or float MACs for float inputs."""
        return dense_macs(self, y)

    def lowered(self, **info) -> nn.Module:
        """The exact dense form: +/-1 weights, ``sign`` of the input, XNOR's K, scale and bias."""
        return SignDense(self)

    def as_dense(self) -> nn.Module | None:
        """Binary weights on float inputs (BinaryConnect, BWN) run as a float op on the expanded +/-1
        weights anyway: one conv / linear with ``scale * W`` (the scale applied before the sum instead
        of after it: float rounding); xnor-popcount layers are kept."""
        if self.binary_input or getattr(self, "shortcut", False):
            return None
        shape = (-1,) + (1,) * (self.float_weight().dim() - 1)
        return dense_module(self, self.float_weight() * self.scale.view(shape), self.bias)

    def _flags(self) -> dict:
        return dict(
            input_scaling=self.input_scaling, binary_input=self.binary_input, threshold=self.threshold is not None
        )

    def kernel_words(self) -> torch.Tensor:
        """The packed words transposed for the kernels (output channels innermost; a conv's in
        :func:`word_dtype` of its input channels), cached."""
        key = (self.words.data_ptr(), self.words._version)
        if self._kernel_words is None or self._kernel_words[0] != key:
            self._kernel_words = (key, self._transposed())
        return self._kernel_words[1]

    def float_weight(self) -> torch.Tensor:
        """The +/-1 weight in the layer's float layout, expanded once and cached."""
        key = (self.words.data_ptr(), self.words._version)
        if self._float is None or self._float[0] != key:
            self._float = (key, self._unpack())
        return self._float[1]


class PackedBinaryLinear(_PackedBase):
    """``y = scale * (K *) (sign(x) . sign(W)) + bias`` on packed words."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        input_scaling: bool = False,
        binary_input: bool = True,
        threshold: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.n_bits = in_features, out_features, in_features
        self._init_packed(
            out_features, math.ceil(in_features / 64), input_scaling, binary_input, threshold, in_features
        )
        set_op_spec(self)

    def spec_args(self) -> dict:
        return dict(**linear_geometry(self), **self._flags())

    def _unpack(self) -> torch.Tensor:
        return unpack_signs(self.words, self.in_features)

    def _transposed(self) -> torch.Tensor:
        return self.words.t().contiguous()  # (W, N)

    def set_weight(self, sign_w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> None:
        self.words = pack_signs(sign_w)
        self.scale, self.bias = scale.detach().float().clone(), bias.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tracing():  # torch.export / torch.compile: one custom op that runs the packed kernels
            return as_op(self, x)
        if x.dim() > 2:  # (batch, ..., features), e.g. tokens: every leading position is a row
            return self.forward(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], self.out_features)
        if not self.binary_input:
            return F.linear(x, self.float_weight().to(x.dtype)) * self.scale + self.bias
        x = self.shifted(x)
        if x.device.type != "cpu":  # GPUs: the bits save memory, not time; unpack to the input's dtype
            dot = F.linear(torch.where(x < 0, -1.0, 1.0).to(x.dtype), self.float_weight().to(x.dtype))
        else:
            dot = self.n_bits - 2 * popcount_xor(pack_rows(x), self.words, self.kernel_words()).to(x.dtype)
        if self.input_scaling:
            dot = dot * x.abs().mean(1, keepdim=True)
        return dot * self.scale + self.bias

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, input_scaling={self.input_scaling}, "
            f"binary_input={self.binary_input}, threshold={self.threshold is not None}"
        )


class PackedBinaryConv2d(_PackedBase):
    """Binary conv as an xnor GEMM over patches of packed words (dilation 1, groups 1). A channels-last
    input is packed from NHWC (64 consecutive channels per word) and the output written channels-last
    (measured 1.3-2x faster per layer than NCHW at batch 256: contiguous compares and stores)."""

    takes_channels_last = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: list,
        stride: list,
        padding: list,
        input_scaling: bool = False,
        binary_input: bool = True,
        threshold: bool = False,
        shortcut: bool = False,
    ) -> None:
        super().__init__()
        set_conv_geometry(self, in_channels, out_channels, kernel_size, stride, padding, [1, 1], 1)
        kh, kw = self.kernel_size
        self.n_bits = in_channels * kh * kw
        self._init_packed(
            out_channels, kh * kw * math.ceil(in_channels / 64), input_scaling, binary_input, threshold, in_channels
        )
        if shortcut and not shortcut_fits(self):
            raise ValueError(
                "shortcut needs out_channels a multiple of in_channels and 'same' padding (odd kernel, "
                f"padding (k - 1) / 2); got {in_channels} -> {out_channels}, kernel {kernel_size}, padding {padding}"
            )
        self.shortcut = shortcut
        set_op_spec(self)
        self.pool = (1, 1)  # a following non-overlapping max pooling: only on a copy from fused()
        self.emit: tuple | None = None  # (the next conv's threshold, its padding): only on a copy from fused()
        self._corr: dict = {}

    def set_weight(self, sign_w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> None:
        self.words = pack_signs(sign_w.permute(0, 2, 3, 1)).flatten(1)  # (Cout, kh * kw * words)
        self.scale, self.bias = scale.detach().float().clone(), bias.detach().float().clone()
        self._corr = {}

    def spec_args(self) -> dict:
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=list(self.kernel_size),
            stride=list(self.stride),
            padding=list(self.padding),
            **self._flags(),
            shortcut=self.shortcut,
        )

    def _padding_correction(self, h: int, w: int, device) -> torch.Tensor:
        key = (h, w, self.words.data_ptr(), self.words._version)
        if key not in self._corr:
            mask = F.pad(
                torch.zeros(1, 1, h, w, device=device), (self.padding[1],) * 2 + (self.padding[0],) * 2, value=1.0
            )
            sign_sum = self.float_weight().sum(1, keepdim=True)  # sum_c sign(W): (Cout, 1, kh, kw)
            self._corr = {key: F.conv2d(mask, sign_sum, stride=self.stride)[0].permute(1, 2, 0)}
        return self._corr[key]  # (Ho, Wo, Cout)

    def _transposed(self) -> torch.Tensor:
        kh, kw = self.kernel_size
        w = self.words.view(self.out_channels, kh, kw, -1).permute(1, 2, 3, 0).contiguous()  # (kh, kw, W, N)
        if word_dtype(self.in_channels) == torch.int32:  # one word, its high half empty: keep the low one
            w = torch.from_numpy(w.numpy().view("uint64").astype("uint32").view("int32"))
        return w

    def _unpack(self) -> torch.Tensor:
        kh, kw = self.kernel_size
        w = self.words.view(self.out_channels, kh, kw, -1)
        return unpack_signs(w, self.in_channels).permute(0, 3, 1, 2).contiguous()

    def accepts_words(self) -> bool:
        """Packed sign words can replace the input where the layer needs nothing but the signs: binary
        inputs without XNOR's K or a real-valued shortcut (both read the float values)."""
        return self.binary_input and not self.input_scaling and not self.shortcut

    def fused(
        self, pool: tuple[int, int] | None = None, reader: RuntimeLayer | None = None
    ) -> PackedBinaryConv2d | None:
        """A copy that pools in its epilogue (``pool``) and / or writes ``reader``'s packed input words
        (``emit``; binary inputs here too, and the numba kernels only). Exact: the same maximum, the
        same comparisons of the same floats."""
        if pool is None and reader is None:
            return None
        if reader is not None and not (self.binary_input and reader.accepts_words() and _numba_kernels()):
            return None
        new = copy.copy(self)
        if pool is not None:
            new.pool = tuple(pool)
        if reader is not None:
            new.emit = (reader.threshold, tuple(reader.padding))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The conv of ``sign(x - t)`` (+ the shortcut), then the max pooling ``pool`` where it is not
        (1, 1): in the kernel's epilogue on the numba channels-last path, else by the runtime's pooling
        after it. On a copy from :meth:`fused` ``pool`` is set, and ``emit = (t, (ph, pw))`` makes the
        layer return the next binary conv's packed input instead of floats: words
        (B, H + 2 ph, W + 2 pw, ceil(C / bits)) of ``sign(pooled y - t)`` in :func:`word_dtype`, which
        that conv takes as its ``x`` (an integer ``x`` is such words)."""
        if tracing() and self.pool == (1, 1) and self.emit is None and x.is_floating_point():
            return as_op(self, x)  # torch.export / torch.compile: one custom op that runs the packed kernels
        y, pooled = self._conv(x)
        return y if pooled or self.pool == (1, 1) else StridedMaxPool2d(self.pool)(y)

    def _conv(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """The conv (and whether it pooled already): the numba packer applies the threshold while
        packing, the conv kernel adds the shortcut in its epilogue, reading channel copies in place,
        and pools a channels-last output in the same pass (or emits the next conv's words)."""
        words_in, emit = not x.is_floating_point(), self.emit is not None
        k = _kernels(x)
        if (words_in or emit) and not (
            k and self.binary_input and not (words_in and (self.input_scaling or self.shortcut))
        ):
            raise RuntimeError(
                "packed-word input or output (an engine's bit chain) needs the numba kernels on the CPU, "
                "binary inputs, and no K or shortcut on the reading conv; run the model itself instead"
            )
        res = shortcut_source(x, self.stride) if self.shortcut else None
        if not self.binary_input or x.device.type != "cpu":  # float inputs; or a GPU: unpack (memory, not time)
            xs = self.shifted(x)
            xin = xs if not self.binary_input else torch.where(xs < 0, -1.0, 1.0).to(x.dtype)
            y = F.conv2d(xin, self.float_weight().to(x.dtype), None, self.stride, self.padding)
            if self.input_scaling:
                y = y * input_scale_map(xs, self.kernel_size, self.stride, self.padding)
            y = y * self.scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
            return (y if res is None else y + copies(res, self.out_channels)), False
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if words_in:
            b, c, h, w = x.shape[0], self.in_channels, x.shape[1] - 2 * ph, x.shape[2] - 2 * pw
        else:
            b, c, h, w = x.shape
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        corr = (
            self._padding_correction(h, w, x.device)
            if ph or pw
            else torch.zeros(ho, wo, self.out_channels, device=x.device)
        )
        if k:  # pack straight into the padded word grid (and K's channel sums), then one conv kernel
            nhwc = words_in or (c > 1 and x.stride(1) == 1 and not x.is_contiguous())  # NHWC in, NHWC out
            t = (self.threshold if self.threshold is not None else torch.zeros(c)).float().contiguous().numpy()
            asum = torch.zeros(b, 1 if nhwc else _n_words(c), h, w) if self.input_scaling else torch.zeros(1, 1, 1, 1)
            if words_in:
                if x.dtype != word_dtype(c):
                    raise ValueError(f"packed input words for {c} channels must be {word_dtype(c)}, got {x.dtype}")
                words = x
            else:
                words, bits = _grid(b, h, w, ph, pw, c), 8 * word_dtype(c).itemsize
                xd = x.detach().float()
                if nhwc:
                    xd = xd.permute(0, 2, 3, 1).contiguous().numpy()
                    k[f"pack_nhwc{bits}"](xd, t, ph, pw, _unsigned(words), asum.numpy(), self.input_scaling)
                else:
                    k[f"pack_nchw{bits}"](
                        xd.contiguous().numpy(), t, ph, pw, _unsigned(words), asum.numpy(), self.input_scaling
                    )
            kmap = torch.empty(b, ho, wo) if self.input_scaling else torch.ones(b, ho, wo)
            if self.input_scaling:
                k["k_map"](asum.numpy(), c, kh, kw, sh, sw, ph, pw, kmap.numpy())
            pkh, pkw = self.pool
            form = f"conv_bits{8 * word_dtype(self.out_channels).itemsize}" if emit else "conv_nhwc" if nhwc else "conv"
            fuse = form != "conv" and self.pool != (1, 1)  # the kernel (and its output layout) pools
            hq, wq = (ho // pkh, wo // pkw) if fuse else (ho, wo)
            if emit:
                tq, (qph, qpw) = self.emit
                tq = (tq if tq is not None else torch.zeros(self.out_channels)).float().contiguous()
                nxt = _grid(b, hq, wq, qph, qpw, self.out_channels)
                out = torch.empty(1, 1, 1, 1)
            else:
                tq, qph, qpw, nxt = torch.zeros(1), 0, 0, torch.zeros(1, 1, 1, 1, dtype=torch.int64)
                out = torch.empty(b, hq, wq, self.out_channels) if nhwc else torch.empty(b, self.out_channels, ho, wo)
            if res is not None:
                res = res.detach().float()
                res = res.permute(0, 2, 3, 1).contiguous() if form != "conv" else res.contiguous()
            k[form](
                _unsigned(words),
                _unsigned(self.kernel_words()),
                sh,
                sw,
                float(self.n_bits),
                corr.detach().float().contiguous().numpy(),
                kmap.detach().float().contiguous().numpy(),
                self.scale.float().contiguous().numpy(),
                self.bias.float().contiguous().numpy(),
                (res if res is not None else x.new_zeros(1, 1, 1, 1, dtype=torch.float32)).numpy(),
                res is not None,
                *((pkh, pkw) if fuse else (1, 1)),
                out.numpy(),
                tq.numpy(),
                qph,
                qpw,
                _unsigned(nxt),
            )
            if emit:
                return nxt, True
            return (out.permute(0, 3, 1, 2) if nhwc else out), fuse
        kmap = (
            input_scale_map(self.shifted(x), self.kernel_size, self.stride, self.padding)[:, 0]
            if self.input_scaling
            else torch.ones(b, ho, wo, device=x.device)
        )
        words = F.pad(pack_signs(self.shifted(x).permute(0, 2, 3, 1)), (0, 0, pw, pw, ph, ph))  # padding packs as +1
        rows = words.unfold(1, kh, sh).unfold(2, kw, sw).permute(0, 1, 2, 4, 5, 3).reshape(b * ho * wo, -1)
        pop = popcount_xor_reference(rows, self.words).view(b, ho, wo, -1)
        dot = (self.n_bits - 2 * pop.to(x.dtype) - corr) * kmap[..., None]
        y = dot.permute(0, 3, 1, 2) * self.scale.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return (y if res is None else y + copies(res, self.out_channels)), False

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, input_scaling={self.input_scaling}, binary_input={self.binary_input}, "
            f"threshold={self.threshold is not None}, shortcut={self.shortcut}"
        )


def shortcut_fits(conv) -> bool:
    """A real-valued shortcut ``P(x)`` has the conv's output shape: channels a multiple of the input's,
    'same' padding (odd kernel, padding ``(k - 1) / 2``), so the output is ``ceil(size / stride)``."""
    return conv.out_channels % conv.in_channels == 0 and all(
        k % 2 == 1 and p == (k - 1) // 2 for k, p in zip(conv.kernel_size, conv.padding)
    )


def real_shortcut(x: torch.Tensor, out_channels: int, stride) -> torch.Tensor:
    """Bi-Real's shortcut for a 'same' conv: ``stride x stride`` window means (a partial window at the
    edge averages what it covers, so the size is ``ceil(size / stride)``), channels repeated ``out / in`` times."""
    return copies(shortcut_source(x, stride), out_channels)


def shortcut_source(x: torch.Tensor, stride) -> torch.Tensor:
    """``x``, or its ``stride x stride`` window means (ceil mode) for a strided conv."""
    return x if tuple(stride) == (1, 1) else F.avg_pool2d(x, tuple(stride), tuple(stride), ceil_mode=True)


def copies(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``x`` with its channels repeated to ``channels`` (channel ``o`` is ``x[:, o % C]``)."""
    return x.repeat(1, channels // x.shape[1], 1, 1) if channels != x.shape[1] else x


def input_scale_map(x: torch.Tensor, kernel_size, stride, padding) -> torch.Tensor:
    """XNOR-Net's K: mean over channels of |x|, averaged over each k x k window (zero padding)."""
    return box_mean(x.abs().mean(1, keepdim=True), kernel_size, stride, padding)


def box_mean(a: torch.Tensor, kernel_size, stride, padding) -> torch.Tensor:
    """The mean of each k x k window of the one-channel map ``a`` (N, 1, H, W), zero padding counted."""
    kh, kw = kernel_size
    box = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=a.dtype, device=a.device)
    return F.conv2d(a, box, stride=stride, padding=padding)


class SignDense(nn.Module):
    """A packed binary layer in plain ops (export form): ``(op(sign(x), W_pm1) [* K]) * scale + bias``,
    with zero padding counted as 0 as in the packed kernel's correction; exact."""

    def __init__(self, layer: _PackedBase) -> None:
        super().__init__()
        self.conv = isinstance(layer, PackedBinaryConv2d)
        self.binary_input, self.input_scaling = layer.binary_input, layer.input_scaling
        self.shortcut = self.conv and layer.shortcut
        t, shape = layer.threshold, ((-1, 1, 1) if self.conv else (-1,))
        self.register_buffer("threshold", None if t is None else t.detach().float().reshape(shape).clone())
        self.weight_of = SignWeight(layer.float_weight().detach())  # packed bits in the graph
        shape = (-1, 1, 1) if self.conv else (-1,)
        self.register_buffer("scale", layer.scale.detach().float().reshape(shape).clone())
        self.register_buffer("bias", layer.bias.detach().float().reshape(shape).clone())
        if self.conv:
            self.kernel_size, self.stride, self.padding = layer.kernel_size, layer.stride, layer.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._binary(x if self.threshold is None else x - self.threshold.to(x.dtype))
        return y + real_shortcut(x, self.weight_of.shape[0], self.stride) if self.shortcut else y

    def _binary(self, x: torch.Tensor) -> torch.Tensor:
        # ``x < 0`` as the packed kernels read it (-0.0 is +1: torch's GELU gives -0.0 below x = -5.5,
        # convnext BNN). ONNX Runtime's Sigmoid returns 0 below x = -18, where torch's SiLU gives tiny
        # negatives (-4e-8 at x = -20): ORT's SiLU then gives -0.0 = +1 where torch has -1, so binary
        # layers after SiLU can disagree there (docs/deploy.md); no sign rule matches both engines
        xin = torch.where(x < 0, -1.0, 1.0).to(x.dtype) if self.binary_input else x
        w = self.weight_of().to(x.dtype)
        if self.conv:
            y = F.conv2d(xin, w, None, self.stride, self.padding)
        else:
            y = F.linear(xin, w)
        if self.binary_input:
            # +/-1 x +/-1 sums are exact integers (zeros included), and a following sign must see them
            # so: without this Round (exact on integers) ONNX Runtime folds the scale into the weights
            # (Conv + Mul fusion), a 0 becomes +/-1e-8 and the next sign flips (BNN mobilenetv2: 28 %
            # of the output norm in ORT, 5e-7 with its graph optimizations off)
            y = torch.round(y)
        if self.input_scaling and self.conv:  # XNOR's K: a window mean of |x|
            y = y * input_scale_map(x, self.kernel_size, self.stride, self.padding)
        elif self.input_scaling:  # a row mean of |x| (the last dimension holds the features)
            y = y * x.abs().mean(-1, keepdim=True)
        return y * self.scale + self.bias
