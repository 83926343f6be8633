"""Parameter quantization: k-means weight sharing, product quantization, Q-CNN, uniform int8/int4."""

from torchslim.quant.kmeans import KMeans, kmeans_1d
from torchslim.quant.pq import PQ, pq_kmeans
from torchslim.quant.qcnn import QCNN
from torchslim.quant.uniform import Uniform

__all__ = ["KMeans", "PQ", "QCNN", "Uniform", "kmeans_1d", "pq_kmeans"]
