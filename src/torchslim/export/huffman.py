"""Canonical Huffman coding of integer streams (Deep Compression's last stage, Han et al. 2016).

``encode(symbols)`` returns the bitstream (uint8, MSB first), the sorted distinct
symbols and their code lengths; canonical codes are rebuilt from the lengths,
so no code table is stored. ``decode`` reverses it with a 2**L lookup table
(L = longest code, at most 16: when plain Huffman would need longer codes, the
symbol counts are halved until it does not, trading a little optimality).
"""

from __future__ import annotations

import heapq

import numpy as np

from torchslim.runtime._numba import module_kernels

MAX_LEN = 16
_NUMBA: dict | bool | None = None  # the compiled decode loop (torchslim.runtime._numba.module_kernels)


def _build() -> dict:
    import numba

    return {"decode": numba.njit(cache=True, nogil=True)(_decode_loop)}


def _decode_loop(stream, L, table_sym, table_len, out) -> int:
    """Decode ``len(out)`` symbols MSB first: the next ``L`` bits (zeros past the end) index the
    lookup tables; returns the bits read, or -1 when the stream ends first. Linear in the symbols,
    no memory beyond ``out`` (compiled by numba; the old per-bit window arrays took
    64 bytes per stream bit and 5.4 GB for an 8.4 MB file)."""
    nbits = stream.shape[0] * 8
    pos = 0  # bits consumed
    buf = 0  # the next `have` bits of the stream (zeros past its end), MSB first
    have = 0
    i = 0  # the next byte to load into buf
    mask = (1 << L) - 1
    for k in range(out.shape[0]):
        if pos >= nbits:
            return -1
        while have < L:
            buf = (buf << 8) | (stream[i] if i < stream.shape[0] else 0)
            i += 1
            have += 8
        v = (buf >> (have - L)) & mask
        length = table_len[v]
        out[k] = table_sym[v]
        have -= length
        buf &= (1 << have) - 1
        pos += length
    return pos


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code length per symbol from positive counts (a single symbol gets length 1)."""
    n = len(counts)
    if n == 1:
        return np.ones(1, dtype=np.int64)
    heap = [(int(c), i, (i,)) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    lengths = np.zeros(n, dtype=np.int64)
    tie = n
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for s in s1 + s2:
            lengths[s] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code values: symbols sorted by (length, index) get consecutive codes."""
    order = np.lexsort((np.arange(len(lengths)), lengths))
    codes = np.zeros(len(lengths), dtype=np.int64)
    code, prev = 0, int(lengths[order[0]])
    for rank, i in enumerate(order):
        if rank:
            code = (code + 1) << (int(lengths[i]) - prev)
        prev = int(lengths[i])
        codes[i] = code
    return codes


def encode(symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bitstream uint8, distinct symbols int64, code lengths uint8). Raises ValueError past MAX_LEN."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    alphabet, inverse, counts = np.unique(symbols, return_inverse=True, return_counts=True)
    if symbols.size == 0:
        return np.zeros(0, np.uint8), alphabet, np.zeros(0, np.uint8)
    lengths = code_lengths(counts)
    while lengths.max() > MAX_LEN:  # length-limit: flatten the distribution until codes fit
        counts = np.maximum(counts >> 1, 1)
        lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    ls, cs = lengths[inverse], codes[inverse]
    total = int(ls.sum())
    start = np.cumsum(ls) - ls
    bits = np.zeros(total, dtype=np.uint8)
    for j in range(int(lengths.max())):  # j-th bit (MSB first) of every symbol that long
        has = ls > j
        bits[start[has] + j] = (cs[has] >> (ls[has] - 1 - j)) & 1
    return np.packbits(bits), alphabet, lengths.astype(np.uint8)


def decode(stream: np.ndarray, alphabet: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """Decode ``n`` symbols."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = lengths.astype(np.int64)
    if len(lengths) == 0 or len(lengths) != len(alphabet):
        raise ValueError(f"corrupt Huffman table: {len(lengths)} code lengths for {len(alphabet)} symbols")
    L = int(lengths.max())
    if L > MAX_LEN or int(lengths.min()) < 1:
        raise ValueError(f"corrupt Huffman table: code lengths must lie in [1, {MAX_LEN}]")
    if float(np.sum(2.0**-lengths)) > 1.0:
        raise ValueError("corrupt Huffman table: the code lengths do not form a prefix code (Kraft sum > 1)")
    if n > 8 * len(stream):
        raise ValueError(f"the stream declares {n} symbols but holds only {8 * len(stream)} bits")
    codes = canonical_codes(lengths)
    table_sym = np.zeros(1 << L, dtype=np.int64)
    table_len = np.zeros(1 << L, dtype=np.int64)
    for i, (c, length) in enumerate(zip(codes, lengths)):
        lo = int(c) << (L - int(length))
        table_sym[lo : lo + (1 << (L - int(length)))] = i
        table_len[lo : lo + (1 << (L - int(length)))] = length
    out = np.empty(n, dtype=np.int64)
    k = module_kernels(__name__)
    step = k["decode"] if k else _decode_loop
    if step(np.ascontiguousarray(stream, dtype=np.uint8), L, table_sym, table_len, out) < 0:
        raise ValueError("Huffman stream ends early (truncated or corrupt)")
    return alphabet[out]
