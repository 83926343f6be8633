"""What every numba kernel of the runtime shares: compiled once on first use when numba is
installed, and numba's thread count follows torch's."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

import torch

_SET = threading.local()  # the torch thread count numba was last matched to, per calling thread


def match_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as torch uses (at most numba's pool size).
    numba's count is per calling thread; it is set again only when torch's has changed (a call
    costs about 1 us, a large share of a batch-1 layer)."""
    n = torch.get_num_threads()
    if getattr(_SET, "n", None) == n:
        return
    import numba

    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    _SET.n = n


def compiled(build: Callable[[], dict | bool]) -> dict | bool:
    """A module's numba kernels, ``build()`` (it imports numba and compiles them; cached on disk), or
    False where numba is not installed (the callers then run their pure-torch forms)."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return build()


def module_kernels(module: str) -> dict | bool:
    """The kernels of runtime module ``module`` (its ``__name__``): built by its ``_build`` through
    :func:`compiled` on first use and kept in its ``_NUMBA`` global (None until then; tests set it
    to False for the pure-torch path, or back to None to rebuild)."""
    mod = sys.modules[module]
    if mod._NUMBA is None:
        mod._NUMBA = compiled(mod._build)
    return mod._NUMBA


def target_features() -> set[str]:
    """The CPU features numba compiles for: the host's, or ``NUMBA_CPU_FEATURES`` when numba is told
    to compile for another CPU (``NUMBA_CPU_NAME``, as ``--isa avx2`` runs do)."""
    from llvmlite import binding as ll
    from numba.core import config

    if config.CPU_NAME not in (None, "host"):
        return {f[1:] for f in (config.CPU_FEATURES or "").split(",") if f.startswith("+")}
    return {k for k, v in ll.get_host_cpu_features().items() if v}
