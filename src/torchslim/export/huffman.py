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

MAX_LEN = 16


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
    bits = np.unpackbits(np.asarray(stream, dtype=np.uint8))
    nbits = len(bits)
    bits = np.concatenate([bits, np.zeros(L, np.uint8)]).astype(np.int64)
    # Window value at every bit position: the L bits starting there, as an integer.
    vals = np.zeros(nbits, dtype=np.int64)
    for j in range(L):
        vals |= bits[j : j + nbits] << (L - 1 - j)
    vals = vals.tolist()
    tl, ts = table_len.tolist(), table_sym.tolist()
    out = [0] * n
    pos = 0
    for k in range(n):
        if pos >= nbits:
            raise ValueError("Huffman stream ends early (truncated or corrupt)")
        v = vals[pos]
        out[k] = ts[v]
        pos += tl[v]
    return alphabet[np.asarray(out, dtype=np.int64)]
