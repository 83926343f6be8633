"""Parameter quantization: k-means weight sharing, product quantization (more to come: Q-CNN, uniform)."""
from torchslim.quant.kmeans import KMeans, kmeans_1d
from torchslim.quant.product import PQ, pq_kmeans
from torchslim.quant.qcnn import QCNN

__all__ = ["KMeans", "PQ", "QCNN", "kmeans_1d", "pq_kmeans"]
