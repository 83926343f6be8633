"""What every numba kernel of the runtime shares: numba's thread count follows torch's."""

from __future__ import annotations

import torch


def match_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as torch uses (at most numba's pool size)."""
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
