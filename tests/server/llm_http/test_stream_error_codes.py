"""In-band gRPC stream errors name their status: ``error_code`` on the error's infer_response, so the SDK raises
the right class (Triton's ``error_message`` alone would only give the base class), and the stream stays usable."""

from __future__ import annotations

import pytest
from llm_http_kit import MODEL
from lmaas.client import LLMClient
from lmaas.protos.errors import InvalidArgument, LMaaSError, NotFound
from processes import ServerProcess


@pytest.mark.parametrize(
    ("model", "sampling", "error"),
    [("no-such-model", {"max_tokens": 4}, NotFound), (MODEL, {"max_tokens": 0}, InvalidArgument)],
)
def test_an_in_band_error_raises_the_class_of_its_status(
    llm_worker: ServerProcess, model: str, sampling: dict[str, int], error: type[LMaaSError]
) -> None:
    with LLMClient(llm_worker.grpc) as client:
        with pytest.raises(error) as info:
            list(client.generate(model, "Hello", **sampling))
        assert type(info.value) is not LMaaSError
        # the worker keeps serving
        assert "".join(client.generate(MODEL, "Hello", max_tokens=2, temperature=0)).strip()
