"""The ONNX Runtime contrib ops (`com.microsoft`) the onnxruntime pipeline may write.

Defined once: the passes that write them import the names, check-graph allows exactly these (and
only for the onnxruntime target), and docs/artifact.md lists them. Stock ONNX Runtime ships a
CPU kernel for each; `MIN_ORT_VERSION` is the oldest release whose kernels take every input and
attribute these passes write (GroupQueryAttention's `query_seqlens`).
"""

from __future__ import annotations

MS_DOMAIN = "com.microsoft"
GROUP_QUERY_ATTENTION = "GroupQueryAttention"
SKIP_SIMPLIFIED_LAYER_NORM = "SkipSimplifiedLayerNormalization"
MATMUL_NBITS = "MatMulNBits"
CONTRIB_OPS = (GROUP_QUERY_ATTENTION, SKIP_SIMPLIFIED_LAYER_NORM, MATMUL_NBITS)
MIN_ORT_VERSION = (1, 32)
# Without contrib ops an artifact needs only opset 23, which ONNX Runtime runs from 1.23 on.
MIN_ORT_VERSION_STANDARD = (1, 23)


def min_onnxruntime(domains: set[str]) -> str:
    """The oldest ONNX Runtime release that runs a graph using ops of `domains`."""
    version = MIN_ORT_VERSION if MS_DOMAIN in domains else MIN_ORT_VERSION_STANDARD
    return ".".join(map(str, version))
