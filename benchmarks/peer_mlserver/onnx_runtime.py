"""A minimal ONNX Runtime model class for MLServer (runs inside MLServer's own venv, not LMaaS's).

``model-settings.json`` points ``implementation`` at ``onnx_runtime.OnnxModel`` and ``parameters.uri`` at the
``.onnx`` file; ``parameters.extra`` may set ``intra_op_threads`` / ``inter_op_threads`` / ``allow_spinning``
(the benchmark passes the same values the LMaaS worker uses by default).
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxModel(MLModel):
    """Decodes every input with MLServer's NumPy codec, runs the session, encodes every output."""

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(extra.get("intra_op_threads", len(os.sched_getaffinity(0))))
        opts.inter_op_num_threads = int(extra.get("inter_op_threads", 1))
        spinning = "1" if extra.get("allow_spinning", False) else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spinning)
        uri = await get_model_uri(self.settings, wellknown_filenames=["model.onnx"])
        self._session = ort.InferenceSession(uri, sess_options=opts, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed: dict[str, np.ndarray] = {inp.name: NumpyCodec.decode_input(inp) for inp in payload.inputs}
        results = self._session.run(self._output_names, feed)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(name, arr) for name, arr in zip(self._output_names, results, strict=True)
            ],
        )
