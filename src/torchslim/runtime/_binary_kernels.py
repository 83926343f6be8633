"""The numba kernels of :mod:`torchslim.runtime.binary` (imported only where numba is installed).

Module-level functions on purpose: numba's on-disk cache keys a function by its code and the
contents of its closure, and a jitted function or intrinsic held in a closure pickles differently
in every process, so kernels defined inside a builder function (as they were) missed the cache in
every new process: 8-14 s of recompiling on the first binary forward, and about 1 MB more cache
files each time. Globals are not part of the key. The factories below close over ints and bools
only (word width, layout, bit emission), which pickle the same everywhere.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from torchslim.runtime._numba import target_features


@intrinsic
def popcount64(typingctx, x):  # of a 32- or 64-bit word, as uint64
    def codegen(context, builder, signature, args):
        v = args[0] if x.bitwidth == 64 else builder.zext(args[0], ir.IntType(64))
        return builder.call(builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)]), [v])

    return types.uint64(x), codegen


VPOPCNT = "avx512vpopcntdq" in target_features()  # a vector popcount instruction where numba compiles to
QCHUNK = 31  # patch rows per xnor_tile call: byte counters (<= 8 per row) stay below 256


@intrinsic
def xnor_tile(typingctx, flat, patch, ob, acc, q0, q1, add):
    # acc[r, ob + c] (int32, +)= sum_q popcount(patch[q, r] ^ flat[q, ob + c]) for r < 4, c < 16,
    # q0 <= q < q1 (at least one row, at most QCHUNK; add: accumulate into acc, else store): a
    # register-blocked micro-kernel in LLVM vector IR. The accumulators stay in registers for the
    # whole q loop; per q: a weight load per vector, 4 broadcasts, one xor / popcount / add per
    # accumulator. Written as IR because numba keeps array accumulators in memory (a load and a
    # store per add: 1.1-1.6x slower). Two forms, by what numba compiles for:
    # - VPOPCNT (AVX-512 VPOPCNTDQ): 4 inputs x 16 outputs as 2 vectors of 8 64-bit words or 1 of
    #   16 32-bit words (layers of <= 32 input channels: 16 outputs in one popcount, where 64-bit
    #   words would be half empty), a vpopcntq / vpopcntd per row.
    # - otherwise (AVX2: popcount is a nibble-table byte shuffle, Mula, Kurz and Lemire 2018): 512 bits
    #   per pass (64-bit words in two passes), counted per byte (llvm.ctpop.v64i8: two vpshufb and
    #   an add) into byte counters; the bytes are summed to word totals once per call, not per row
    #   (the vpsadbw and 64-bit add of a word popcount saved per row).
    #   Harley-Seal carry-save adders over pairs of rows on top of it (256-bit passes, so the ones
    #   and counter registers fit AVX2's 16) measured no faster on vgg_small (22.1 vs 22.3 ms of
    #   binary convs at batch 256): per row, the popcount is no longer the larger part of the tile.
    bits = flat.dtype.bitwidth

    def codegen(context, builder, sig, args):
        i64, i32, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
        lanes = 512 // bits
        nv = 16 // lanes if VPOPCNT else 1  # vectors per pass
        passes = 16 // (lanes * nv)
        vt = ir.VectorType(ir.IntType(bits), lanes)
        ct = vt if VPOPCNT else ir.VectorType(i8, 64)  # popcounts per word, or per byte
        ctpop = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ct, [ct]), f"llvm.ctpop.v{ct.count}i{ct.element.width}"
        )
        fa, pa, aa = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1, 3))
        n = cgutils.unpack_tuple(builder, fa.shape)[1]
        na = cgutils.unpack_tuple(builder, aa.shape)[1]
        q0, q1, add = args[4], args[5], args[6]
        wide = ir.VectorType(i32, lanes)  # int32 counts: converted to float in one instruction on AVX2

        def xors(q, col):  # [x[r, v]] at patch row q: bitcast(weights ^ broadcast input word)
            base = builder.add(builder.mul(q, n), col)
            ws = [
                builder.load(
                    builder.bitcast(
                        builder.gep(fa.data, [builder.add(base, ir.Constant(i64, lanes * v))]), vt.as_pointer()
                    ),
                    align=bits // 8,
                )
                for v in range(nv)
            ]
            out = []
            for r in range(4):
                s = builder.load(
                    builder.gep(pa.data, [builder.add(builder.mul(q, ir.Constant(i64, 4)), ir.Constant(i64, r))])
                )
                sv = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(i32, 0))
                sv = builder.shuffle_vector(
                    sv, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
                )
                out += [builder.bitcast(builder.xor(ws[v], sv), ct) for v in range(nv)]
            return out

        for h in range(passes):
            col = builder.add(args[2], ir.Constant(i64, h * lanes * nv))  # this pass's first output
            entry, loop, done = (
                builder.basic_block,
                builder.append_basic_block("tile"),
                builder.append_basic_block("tile_end"),
            )
            builder.branch(loop)  # q0 < q1: at least one row
            builder.position_at_end(loop)
            q = builder.phi(i64)
            accs = [builder.phi(ct) for _ in range(4 * nv)]
            counts = [builder.add(a, builder.call(ctpop, [x])) for a, x in zip(accs, xors(q, col))]
            q_next = builder.add(q, ir.Constant(i64, 1))
            q.add_incoming(q0, entry)
            q.add_incoming(q_next, loop)
            for a, a_next in zip(accs, counts):
                a.add_incoming(ir.Constant(ct, None), entry)
                a.add_incoming(a_next, loop)
            builder.cbranch(builder.icmp_signed("<", q_next, q1), loop, done)
            builder.position_at_end(done)
            for r in range(4):
                for v in range(nv):
                    total = counts[nv * r + v] if VPOPCNT else _byte_sums(builder, counts[nv * r + v], bits)
                    total = builder.trunc(total, wide) if bits == 64 else total
                    off = builder.add(
                        builder.mul(ir.Constant(i64, r), na), builder.add(col, ir.Constant(i64, lanes * v))
                    )
                    ptr = builder.bitcast(builder.gep(aa.data, [off]), wide.as_pointer())
                    total = builder.select(add, builder.add(builder.load(ptr, align=4), total), total)
                    builder.store(total, ptr, align=4)
        return context.get_dummy_value()

    return types.void(flat, patch, types.intp, acc, types.intp, types.intp, types.boolean), codegen


def _byte_sums(builder, counts, bits):
    # the per-byte counts (<N x i8>) added up within each `bits`-bit word: pairs of bytes, then of
    # 16-bit halves (then of 32-bit halves), with shifts and masks
    v, w, total = counts, 8, 8 * counts.type.count
    while w < bits:
        vt = ir.VectorType(ir.IntType(2 * w), total // (2 * w))
        v = builder.bitcast(v, vt)
        lo = builder.and_(v, ir.Constant(vt, [(1 << w) - 1] * vt.count))
        v = builder.add(lo, builder.lshr(v, ir.Constant(vt, [w] * vt.count)))
        w *= 2
    return v


@intrinsic
def abs_lane_sum(typingctx, px, t, start, nbits):
    # sum of |px[start + i] - t[start + i]| for i < nbits (>= 1) in lane_total's order: channel i
    # adds to lane i % 16 (a <16 x float> accumulator, 16 channels per add), the last nbits % 16
    # channels as one more vector whose other lanes add +0.0 (exact: lanes hold sums of |.| >= +0),
    # then the tree 8 + 8, 4 + 4, 2 + 2, 1 + 1. Vector IR: written with scalar lanes, numba left
    # the per-pixel tree scalar (1.5 ms of 2.2 to pack 32 x 28 x 28 at batch 256). No fast-math
    # flags: the adds are the ordered float adds of the NCHW packer's sums.
    if px.layout != "C" or t.layout != "C":
        return None

    def codegen(context, builder, sig, args):
        f32, i64, i32 = ir.FloatType(), ir.IntType(64), ir.IntType(32)
        vt = ir.VectorType(f32, 16)
        fabs = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vt, [vt]), "llvm.fabs.v16f32")
        pa, ta = (context.make_array(sig.args[i])(context, builder, args[i]) for i in (0, 1))
        start, nbits = args[2], args[3]

        def vec(arr, off):
            return builder.load(builder.bitcast(builder.gep(arr.data, [off]), vt.as_pointer()), align=4)

        full = builder.lshr(nbits, ir.Constant(i64, 4))
        entry, head, body, check, tail, tree = (
            builder.basic_block,
            builder.append_basic_block("lanes_head"),
            builder.append_basic_block("lanes_body"),
            builder.append_basic_block("lanes_check"),
            builder.append_basic_block("lanes_tail"),
            builder.append_basic_block("lanes_tree"),
        )
        builder.branch(head)
        builder.position_at_end(head)
        i, acc = builder.phi(i64), builder.phi(vt)
        builder.cbranch(builder.icmp_signed("<", i, full), body, check)
        builder.position_at_end(body)
        off = builder.add(start, builder.shl(i, ir.Constant(i64, 4)))
        acc_next = builder.fadd(acc, builder.call(fabs, [builder.fsub(vec(pa, off), vec(ta, off))]))
        i_next = builder.add(i, ir.Constant(i64, 1))
        builder.branch(head)
        i.add_incoming(ir.Constant(i64, 0), entry)
        i.add_incoming(i_next, body)
        acc.add_incoming(ir.Constant(vt, None), entry)
        acc.add_incoming(acc_next, body)
        builder.position_at_end(check)
        rem = builder.and_(nbits, ir.Constant(i64, 15))
        builder.cbranch(builder.icmp_signed("!=", rem, ir.Constant(i64, 0)), tail, tree)
        builder.position_at_end(tail)  # the last nbits % 16 channels; loads clamped to the last one
        base = builder.add(start, builder.shl(full, ir.Constant(i64, 4)))
        last = builder.sub(builder.add(start, nbits), ir.Constant(i64, 1))
        av, bv = ir.Constant(vt, ir.Undefined), ir.Constant(vt, ir.Undefined)
        for ln in range(16):
            idx = builder.add(base, ir.Constant(i64, ln))
            idx = builder.select(builder.icmp_signed("<", idx, last), idx, last)
            av = builder.insert_element(av, builder.load(builder.gep(pa.data, [idx])), ir.Constant(i32, ln))
            bv = builder.insert_element(bv, builder.load(builder.gep(ta.data, [idx])), ir.Constant(i32, ln))
        v16 = ir.VectorType(i64, 16)
        rems = builder.shuffle_vector(
            builder.insert_element(ir.Constant(v16, ir.Undefined), rem, ir.Constant(i32, 0)),
            ir.Constant(v16, ir.Undefined),
            ir.Constant(ir.VectorType(i32, 16), [0] * 16),
        )
        mask = builder.icmp_signed("<", ir.Constant(v16, list(range(16))), rems)
        d = builder.select(mask, builder.call(fabs, [builder.fsub(av, bv)]), ir.Constant(vt, None))
        with_tail = builder.fadd(acc, d)
        builder.branch(tree)
        builder.position_at_end(tree)
        v = builder.phi(vt)
        v.add_incoming(acc, check)
        v.add_incoming(with_tail, tail)
        for half in (8, 4, 2):
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, half), list(range(half))))
            hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, half), list(range(half, 2 * half))))
            v = builder.fadd(lo, hi)
        return builder.fadd(
            builder.extract_element(v, ir.Constant(i32, 0)), builder.extract_element(v, ir.Constant(i32, 1))
        )

    return types.float32(px, t, types.int64, types.int64), codegen


@njit(inline="always", nogil=True)
def block_popcounts(flat, patch, acc):
    # acc[r, o] = sum_q popcount(patch[q, r] ^ flat[q, o]) for r < 4: xnor_tile over 16 outputs at
    # a time, the last n % 16 outputs in plain loops
    n, nq = flat.shape[1], patch.shape[0]
    n16 = n - n % 16
    for ob in range(0, n16, 16):
        for q0 in range(0, nq, QCHUNK):
            xnor_tile(flat, patch, ob, acc, q0, min(q0 + QCHUNK, nq), q0 > 0)
    for r in range(4):
        for o in range(n16, n):
            acc[r, o] = 0
    for q in range(patch.shape[0]):
        v0, v1, v2, v3 = patch[q, 0], patch[q, 1], patch[q, 2], patch[q, 3]
        for o in range(n16, n):
            x = flat[q, o]
            acc[0, o] += np.int32(popcount64(v0 ^ x))
            acc[1, o] += np.int32(popcount64(v1 ^ x))
            acc[2, o] += np.int32(popcount64(v2 ^ x))
            acc[3, o] += np.int32(popcount64(v3 ^ x))


@njit(parallel=True, cache=True, nogil=True)
def pack_rows(x, out):  # float32 (R, C) -> uint64 (R, W)
    r_n, c = x.shape
    for r in prange(r_n):
        for k in range(out.shape[1]):
            v = np.uint64(0)
            for bit in range(min(64, c - 64 * k)):  # branch-free: vectorizes
                v |= np.uint64(x[r, 64 * k + bit] < 0) << np.uint64(bit)
            out[r, k] = v


@njit(parallel=True, cache=True, nogil=True)
def xnor_gemm(a, bt, out):  # (M, W) x (W, N) -> popcounts (M, N)
    # Register blocking over 4 rows of a; the innermost loop runs over the N output columns
    # (contiguous in bt), so it vectorizes (vpopcntq on AVX-512 VPOPCNTDQ CPUs).
    m, w = a.shape
    n = bt.shape[1]
    for blk in prange((m + 3) // 4):
        i0 = 4 * blk
        if m - i0 >= 4:
            acc = np.empty((4, n), np.int32)
            patch = np.empty((w, 4), np.uint64)
            for k in range(w):
                for r in range(4):
                    patch[k, r] = a[i0 + r, k]
            block_popcounts(bt, patch, acc)
            for r in range(4):
                for j in range(n):
                    out[i0 + r, j] = acc[r, j]
        else:  # the last rows one by one (batch 1 costs one row, not a block of four)
            for i in range(i0, m):
                acc1 = np.zeros(n, np.int64)
                for k in range(w):
                    v = a[i, k]
                    for j in range(n):
                        acc1[j] += popcount64(v ^ bt[k, j])
                for j in range(n):
                    out[i, j] = acc1[j]


@njit(inline="always", nogil=True)
def lane_total(p, stride):
    # p[l * stride + j] for lanes l < 16 summed as a fixed tree (8 + 8, 4 + 4, 2 + 2, 1 + 1) into
    # p[j]: the one order both packers give K's channel sums (their NCHW and NHWC outputs agree)
    for step in (8, 4, 2, 1):
        for ln in range(step):
            for j in range(stride):
                p[ln * stride + j] += p[(ln + step) * stride + j]


def packers(wb):
    # the two packers for words of wb bits: a constant of each compiled kernel (read from the
    # output's itemsize at run time, the bit loops no longer vectorize: 4-9x slower, measured)
    @njit(parallel=True, cache=True, nogil=True)
    def pack_nchw(x, t, ph, pw, out, asum, want_abs):
        # float32 (B, C, H, W) -> words (B, H+2ph, W+2pw, nw) of wb = 32 or 64 bits;
        # bit = x[b, c] < t[c]: the sign of x - t (RSign's threshold; t = 0 without one). With
        # want_abs, also asum[b, k] = the sum of |x - t| over word k's channels (XNOR-Net's K, from
        # the planes while they are in cache): channel wb k + i adds to lane i % 16 in channel
        # order, then the lanes' tree (lane_total).
        nb, c, h, w = x.shape
        for idx in prange(nb * out.shape[3]):
            b, k = idx // out.shape[3], idx % out.shape[3]
            words = np.zeros((h, w), np.uint64)
            part = np.zeros(16 * h * w if want_abs else 1, np.float32)
            for bit in range(min(wb, c - wb * k)):  # contiguous planes, branch-free: vectorizes
                plane, tc = x[b, wb * k + bit], t[wb * k + bit]
                for i in range(h):
                    for j in range(w):
                        words[i, j] |= np.uint64(plane[i, j] < tc) << np.uint64(bit)
                if want_abs:
                    a = part[(bit % 16) * h * w : (bit % 16 + 1) * h * w]
                    for i in range(h):
                        for j in range(w):
                            a[i * w + j] += abs(plane[i, j] - tc)
            if want_abs:
                lane_total(part, h * w)
                for i in range(h):
                    for j in range(w):
                        asum[b, k, i, j] = part[i * w + j]
            for i in range(h):
                for j in range(w):
                    out[b, i + ph, j + pw, k] = words[i, j]

    @njit(parallel=True, cache=True, nogil=True)
    def pack_nhwc(x, t, ph, pw, out, asum, want_abs):
        # float32 (B, H, W, C) -> words (B, H+2ph, W+2pw, nw) of wb bits: a pixel's channels are
        # contiguous, so each word is wb consecutive compares; with want_abs, asum[b, 0] = sum_c
        # |x - t|, per word in pack_nchw's order (abs_lane_sum: 16 lanes, then the tree, in vector
        # registers), words added in order. (Lane partials kept per row, their tree run over the
        # row's pixels at once, measured 1.4-1.6x slower than a per-pixel tree.)
        nb, h, w, c = x.shape
        nw = out.shape[3]
        for idx in prange(nb * h):
            b, i = idx // h, idx % h
            for j in range(w):
                px = x[b, i, j]
                s = np.float32(0)
                for k in range(nw):
                    v = np.uint64(0)
                    nbits = min(wb, c - wb * k)
                    for bit in range(nbits):
                        v |= np.uint64(px[wb * k + bit] < t[wb * k + bit]) << np.uint64(bit)
                    out[b, i + ph, j + pw, k] = v
                    if want_abs:
                        s += abs_lane_sum(px, t, wb * k, nbits)
                if want_abs:
                    asum[b, 0, i, j] = s

    return pack_nchw, pack_nhwc


@njit(parallel=True, cache=True, nogil=True)
def k_map(asum, c, kh, kw, sh, sw, ph, pw, out):
    # XNOR-Net's K from the packers' channel sums asum (B, W64, H, W): with A = (sum_k asum[b, k]) / c,
    # out[b, oy, ox] = (sum over the window's columns of (sum over its rows of A)) / (kh kw), zero
    # padding; per output row, the window's rows are summed into one padded row first
    nb, ho, wo = out.shape
    nw, h, w = asum.shape[1], asum.shape[2], asum.shape[3]
    inv, cf = np.float32(1) / np.float32(kh * kw), np.float32(c)
    for idx in prange(nb * ho):
        b, oy = idx // ho, idx % ho
        row = np.zeros(w + 2 * pw, np.float32)
        for ky in range(kh):
            y = oy * sh + ky - ph
            if 0 <= y < h:
                for x in range(w):
                    a = asum[b, 0, y, x]
                    for k in range(1, nw):
                        a += asum[b, k, y, x]
                    row[x + pw] += a / cf
        for ox in range(wo):
            v = np.float32(0)
            for kx in range(kw):
                v += row[ox * sw + kx]
            out[b, oy, ox] = v * inv


@njit(inline="always", nogil=True)
def pixel_block(xw, flat, b, iy, x0, x1, x2, x3, kh, kw, w, acc, patch):
    # acc[r, o] = sum over the kh x kw x W patch words of popcount(x_r ^ w_o), 4 output pixels
    # (input columns x0..x3, top row iy) at once: their patch words gathered into patch (q, 4),
    # then the register-blocked tiles over the output channels
    q = 0
    for ky in range(kh):
        row = xw[b, iy + ky]
        for kx in range(kw):
            for k in range(w):
                patch[q, 0], patch[q, 1] = row[x0 + kx, k], row[x1 + kx, k]
                patch[q, 2], patch[q, 3] = row[x2 + kx, k], row[x3 + kx, k]
                q += 1
    block_popcounts(flat, patch, acc)


def conv_kernel(nhwc, emit=False, wb=64):
    # (B, Hp, Wp, W) x (kh, kw, W, N) -> float32 (B, N, Ho, Wo), or (B, Ho, Wo, N) with nhwc:
    # out = ((n_bits - 2 popcount) - corr[oy, ox, o]) * kmap[b, oy, ox] * scale[o] + bias[o]
    #       (+ res[b, o % R, oy, ox]: the real-valued shortcut, its channel copies read in place;
    #       res in out's layout). Separate compiled kernels per (nhwc, emit): a layout branch
    #       inside one costs the NCHW form 2.6x (measured: its epilogue no longer vectorizes).
    #       With nhwc and a pooling window (pkh, pkw) other than (1, 1), out is the
    #       non-overlapping max pooling of that (B, Ho // pkh, Wo // pkw, N): each conv row goes
    #       to a row buffer in cache and is pooled from there (NaN propagating), so the unpooled
    #       map is never written. With emit (nhwc form), out is not written: the next binary
    #       conv's packed input is, in words of wb bits: words[b, qph + y, qpw + x, k] bit i =
    #       (pooled out)[wb k + i] < tq[wb k + i] (its sign after its threshold), where pooling
    #       becomes an AND of the window's words (max < t exactly when every value is; a NaN gives
    #       bit 0 both ways); words comes zeroed (its padding packs as +1, as the packers' does).
    def xnor_conv(xw, wt, sh, sw, n_bits, corr, kmap, scale, bias, res, use_res, pkh, pkw, out, tq, qph, qpw, words):
        kh, kw, w = wt.shape[0], wt.shape[1], wt.shape[2]
        ho, wo = (xw.shape[1] - kh) // sh + 1, (xw.shape[2] - kw) // sw + 1  # the conv's output
        if emit:
            nb, n, rows, cols = words.shape[0], wt.shape[3], words.shape[1] - 2 * qph, words.shape[2] - 2 * qpw
        elif nhwc:
            nb, n, rows, cols = out.shape[0], out.shape[3], out.shape[1], out.shape[2]
        else:
            nb, n, rows, cols = out.shape[0], out.shape[1], ho, wo
        pooled = nhwc and (pkh > 1 or pkw > 1)
        buffered = pooled or emit
        flat = wt.reshape(kh * kw * w, n)
        for idx in prange(nb * rows):
            b, py = idx // rows, idx % rows
            acc = np.empty((4, n), np.int32)  # int32: vector int -> float conversion on AVX2 too
            patch = np.empty((kh * kw * w, 4), xw.dtype)
            buf = np.empty((wo if buffered else 1, n), np.float32)
            for a in range(pkh if buffered else 1):
                oy = py * pkh + a if buffered else py
                for ox0 in range(0, wo, 4):
                    last = wo - 1
                    x0, x1 = ox0 * sw, min(ox0 + 1, last) * sw
                    x2, x3 = min(ox0 + 2, last) * sw, min(ox0 + 3, last) * sw
                    pixel_block(xw, flat, b, oy * sh, x0, x1, x2, x3, kh, kw, w, acc, patch)
                    for r in range(min(4, wo - ox0)):
                        ox = ox0 + r
                        if nhwc:  # one contiguous run of output channels
                            y = buf[ox] if buffered else out[b, oy, ox]
                            for o in range(n):
                                dot = (n_bits - 2 * np.float32(acc[r, o])) - corr[oy, ox, o]
                                y[o] = dot * kmap[b, oy, ox] * scale[o] + bias[o]
                            if use_res:  # copy by copy: no modulo in the loop, so it vectorizes
                                rr, rc = res[b, oy, ox], res.shape[3]
                                for o0 in range(0, n, rc):
                                    ys = y[o0 : o0 + rc]
                                    for o in range(rc):
                                        ys[o] += rr[o]
                        else:
                            for o in range(n):
                                dot = (n_bits - 2 * np.float32(acc[r, o])) - corr[oy, ox, o]
                                out[b, o, oy, ox] = dot * kmap[b, oy, ox] * scale[o] + bias[o]
                            if use_res:
                                rc = res.shape[1]
                                for o0 in range(0, n, rc):
                                    for o in range(rc):
                                        out[b, o0 + o, oy, ox] += res[b, o, oy, ox]
                if emit:  # this conv row's signs into the pooled row's words: AND over the window
                    for px in range(cols):
                        dst = words[b, py + qph, px + qpw]
                        for k in range(words.shape[3]):
                            m = np.uint64(0)
                            for e in range(pkw):
                                src, v = buf[px * pkw + e], np.uint64(0)
                                for bit in range(min(wb, n - wb * k)):  # branch-free: vectorizes
                                    v |= np.uint64(src[wb * k + bit] < tq[wb * k + bit]) << np.uint64(bit)
                                m = v if e == 0 else m & v
                            dst[k] = m if a == 0 else dst[k] & m
                elif pooled:  # this conv row into the pooled row: the window's maximum so far
                    for px in range(cols):
                        yo = out[b, py, px]
                        for e in range(pkw):
                            src = buf[px * pkw + e]
                            if a == 0 and e == 0:
                                for o in range(n):
                                    yo[o] = src[o]
                            else:
                                for o in range(n):  # `|`, not `or`: a select, so it vectorizes
                                    v, m = src[o], yo[o]
                                    yo[o] = v if (v > m) | (v != v) else m

    return njit(parallel=True, cache=True, nogil=True)(xnor_conv)


def kernels() -> dict:
    """The compiled kernels by name (each compiles on first call, cached on disk)."""
    return {
        "pack": pack_rows,
        "gemm": xnor_gemm,
        **{f"pack_{form}{wb}": f for wb in (32, 64) for form, f in zip(("nchw", "nhwc"), packers(wb))},
        "k_map": k_map,
        "conv": conv_kernel(False),
        "conv_nhwc": conv_kernel(True),
        **{f"conv_bits{wb}": conv_kernel(True, True, wb) for wb in (32, 64)},
    }
