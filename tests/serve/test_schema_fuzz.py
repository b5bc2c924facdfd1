"""Schema fuzz: schemathesis generates requests from the server's own OpenAPI schema (every
operation; valid and invalid query options, raw and multipart bodies) and sends them to the
real server; none may get a 5xx, and the process must live on. Examples per operation and mode
are bounded (and derandomized) so the run is short and repeatable."""
from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

EXAMPLES = {"/v1/predict": 30}  # per generation mode; 3 for the operations without inputs


def test_no_request_from_the_schema_gets_a_5xx(tiny_server):
    url, process = tiny_server
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/predict", "/v1/model", "/healthz", "/readyz"}
    seen: dict[str, set[int]] = {}
    for operation in operations:
        # invalid data needs something to make invalid: only the predict operation has inputs
        modes = list(GenerationMode) if operation.path == "/v1/predict" else [GenerationMode.POSITIVE]
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES.get(operation.path, 3), deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case):
                response = case.call(base_url=url, timeout=30)
                seen.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)
                assert response.status_code < 500, (
                    f"{case.method} {case.path} {mode.value}: {response.status_code} {response.text[:300]}")

            fuzz()
    assert process.poll() is None
    print("\nstatus codes seen:", {k: sorted(v) for k, v in seen.items()})
    # the fuzzer reached the upload's refusals, not only the easy endpoints
    assert {400, 422} <= seen["POST /v1/predict"]
