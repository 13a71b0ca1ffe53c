"""PyTorch backend: TorchScript (``model.pt``) and torch.export programs (``model.pt2``).

Nothing is unpickled beyond what ``torch.jit.load`` / ``torch.export.load``
read; signatures come from the model config, since neither format records
names and dtypes the protocol needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
from lmaas.server.backends.base import Array, Backend, BackendError, Signature

__all__ = ["TorchBackend"]

# Read-only numpy views of request bytes are only read by the model.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
_BF16 = np.dtype(ml_dtypes.bfloat16)


class TorchBackend(Backend):
    def __init__(
        self, path: Path, inputs: Sequence[Signature], outputs: Sequence[Signature], parameters: Mapping[str, Any]
    ) -> None:
        import torch

        if not inputs or not outputs:
            raise BackendError(f"{path.name}: a PyTorch model needs inputs and outputs in its config")
        if "intra_op_threads" in parameters:
            torch.set_num_threads(int(parameters["intra_op_threads"]))
        try:
            if path.suffix == ".pt2":
                self.platform = "pytorch_export"
                self._module: Any = torch.export.load(str(path)).module()
            else:
                self.platform = "pytorch_libtorch"
                self._module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise BackendError(f"torch cannot load {path.name}: {exc}") from exc
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self._torch = torch

    def _to_torch(self, array: Array) -> Any:
        if array.dtype == _BF16:
            return self._torch.from_numpy(np.ascontiguousarray(array).view(np.uint16)).view(self._torch.bfloat16)
        if array.dtype.kind == "O":
            raise BackendError("the PyTorch backend does not take BYTES tensors")
        return self._torch.from_numpy(array)

    def _to_numpy(self, tensor: Any) -> Array:
        tensor = tensor.detach().contiguous()
        if tensor.dtype == self._torch.bfloat16:
            array: Array = tensor.view(self._torch.uint16).numpy().view(_BF16)
        else:
            array = tensor.numpy()
        return array

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        args = [self._to_torch(inputs[s.name]) for s in self.inputs]
        try:
            with self._torch.inference_mode():
                result = self._module(*args)
        except Exception as exc:
            raise BackendError(f"torch failed: {exc}") from exc
        results = result if isinstance(result, (tuple, list)) else (result,)
        if len(results) != len(self.outputs):
            raise BackendError(f"model returned {len(results)} outputs, config declares {len(self.outputs)}")
        by_name = {s.name: r for s, r in zip(self.outputs, results, strict=True)}
        return {name: self._to_numpy(by_name[name]) for name in outputs}

    def close(self) -> None:
        del self._module
