"""Parameter quantization: k-means weight sharing (more to come: PQ, Q-CNN, uniform)."""
from torchslim.quant.kmeans import KMeans, kmeans_1d

__all__ = ["KMeans", "kmeans_1d"]
