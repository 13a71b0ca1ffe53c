"""The demo model ``lmaas up`` deploys: ONNX, ``y = 2 * x + 1``, input ``x`` FP32 [-1, 4], output ``y`` FP32 [-1, 4].

Built once with the ``onnx`` package (opset 13, IR version 8) from a Mul and an Add node with the
initializers 2.0 and 1.0, and kept as bytes so that ``lmaas up`` needs no model download and no
``onnx`` install. ``tests/control_plane/test_cli.py`` checks it with onnxruntime.
"""

from __future__ import annotations

import base64

__all__ = ["DEMO_ONNX"]

DEMO_ONNX = base64.b64decode(
    "CAgSBWxtYWFzOoABChAKAXgKA3R3bxIBdCIDTXVsChAKAXQKA29uZRIBeSIDQWRkEgRkZW1vKg8IARABQgN0d29KBAAAAEAqDwgBEAFCA29uZUoE"
    "AACAP1oYCgF4EhMKEQgBEg0KBxIFYmF0Y2gKAggEYhgKAXkSEwoRCAESDQoHEgViYXRjaAoCCARCBAoAEA0="
)
