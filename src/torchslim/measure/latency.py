"""Latency: median of repeated runs with ``torch.utils.benchmark``, thread count recorded."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch
import torch.nn as nn

from torchslim.core import inputs
from torchslim.runtime.timing import time_ms


@torch.inference_mode()
def latency_ms(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch: int = 1,
    *,
    min_run_time: float = 1.0,
    threads: int | None = None,
) -> float:
    """Median milliseconds per forward pass of a batch of ``batch`` inputs of ``input_shape``."""
    model.eval()
    p = next(model.parameters(), None)
    x = inputs.from_shape(input_shape, batch, p.device if p is not None else "cpu", random=True)
    threads = threads or torch.get_num_threads()
    return time_ms(model, x, min_run_time, threads)


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_vpopcntdq", "amx_int8", "asimd", "sve")

# a process started with these variables runs as an AVX2-only CPU as far as oneDNN (float convs)
# and numba (binary, sparse and lookup-table kernels: Haswell, scalar popcnt) are concerned; fbgemm's
# int8 kernels pick their ISA themselves and are not capped
AVX2_ONLY_ENV = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fsgsbase,+fxsr,+lzcnt,+mmx,"
    "+movbe,+pclmul,+popcnt,+rdrnd,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,+xsaveopt",
}


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    """(model name, flags) from /proc/cpuinfo, read once per process."""
    import platform
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown", ()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith(("flags", "Features"))), [])
    return name or platform.machine(), tuple(flags)


_ALLOCATOR = "default"


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory for reuse (``mallopt``): blocks up to 1 GB from the
    heap instead of a fresh ``mmap`` each (M_MMAP_THRESHOLD), no trimming back to the OS
    (M_TRIM_THRESHOLD), a 64 MB top pad. By default every activation tensor above glibc's mmap
    threshold (at most 32 MB) is a new mapping that page-faults on its first write in every forward
    pass: vgg_small XNOR at batch 256 had 7,000-12,500 minor page faults per forward and took 46-57
    ms, against none after two warm-up calls and 36-44 ms with this setting (float vgg_small in
    PyTorch 125 -> 105 ms; the project's AMD EPYC). Process-wide and kept for the process's life
    (resident memory stays at its peak), so the command line and the benchmark scripts call it at
    start; a library user may. PyTorch's CPU tuning guide recommends a caching allocator for
    inference for the same reason. Returns :func:`allocator` (unchanged where the C library has no
    ``mallopt``)."""
    global _ALLOCATOR
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return _ALLOCATOR
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    settings = ((m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20))
    if all(mallopt(p, v) == 1 for p, v in settings):
        _ALLOCATOR = "glibc, freed memory kept"
    return _ALLOCATOR


def allocator() -> str:
    """How the C allocator was set when latencies were taken (recorded with them): ``default``, or
    ``glibc, freed memory kept`` after :func:`keep_freed_memory`."""
    return _ALLOCATOR


def cpu_flags() -> set[str]:
    """The kernel-relevant instruction sets (:data:`ISA_FLAGS`) this CPU has."""
    return set(_cpuinfo()[1]) & set(ISA_FLAGS)


def cpu_info() -> str:
    """The CPU model and the instruction sets the kernels depend on, e.g.
    ``AMD EPYC (avx2, avx512f, avx512_vnni, avx512_vpopcntdq)``: recorded with every latency,
    since int8 and popcount speed-ups differ between AVX2-only and AVX-512 machines."""
    name, flags = _cpuinfo()
    return f"{name} ({', '.join(f for f in ISA_FLAGS if f in flags)})"


def layer_latency(
    model: nn.Module,
    input_shape: tuple,
    batch: int = 256,
    *,
    engine: str = "eager",
    min_run_time: float = 0.2,
    rounds: int = 2,
) -> dict[str, float]:
    """Milliseconds of each leaf layer as ``engine`` (``eager`` or ``pytorch``) runs it, each timed
    alone on the input it receives in one forward pass of ``batch`` random inputs (its memory layout
    included: NHWC, batch-last); the smallest median of ``rounds`` passes over all layers (a busy
    machine only ever adds time). Layer names are the model's; a BatchNorm the eager engine folds into
    its conv runs as ``Identity`` and its conv carries it. The per-layer MACs-versus-latency view of
    a pruned or factorized model: fewer MACs are not proportionally fewer milliseconds."""
    from torchslim import engines
    from torchslim.core.surgery import leaf_modules

    if engine not in ("eager", "pytorch"):
        raise ValueError(f"engine={engine!r}; per-layer latency needs 'eager' or 'pytorch' (whole graphs elsewhere)")
    run = engines.build(engine, model.eval(), input_shape)
    root = getattr(run.fn, "module", run.fn)  # the eager view (inside its channels-last wrapper) or the model
    seen: dict[str, tuple] = {}

    def grab(name: str):
        def hook(mod: nn.Module, args: tuple) -> None:  # must return None (a value would replace args)
            seen.setdefault(name, (mod, args))

        return hook

    hooks = [m.register_forward_pre_hook(grab(name)) for name, m in leaf_modules(root)]
    try:
        with torch.inference_mode():
            inputs.call(run, inputs.from_shape(input_shape, batch, random=True))
    finally:
        for h in hooks:
            h.remove()
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, (mod, args) in seen.items():
            t = time_ms(lambda a, _m=mod: _m(*a), args, min_run_time)
            best[name] = min(t, best.get(name, t))
    return best
