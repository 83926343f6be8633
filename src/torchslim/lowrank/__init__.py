"""Low-rank approximation: SVD, Tucker-2, CP, spatial separable; automatic ranks."""

from torchslim.lowrank.factorize import CP, SVD, Auto, LowRank, Spatial, Tucker
from torchslim.lowrank.rank import energy_rank, vbmf_rank

__all__ = ["CP", "SVD", "Auto", "LowRank", "Spatial", "Tucker", "energy_rank", "vbmf_rank"]
