"""Property-based run over the OpenAPI spec (schemathesis): no generated request gets a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from recstack.serving.api import Runtime
from tests.serving.conftest import KEY


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(served: tuple[TestClient, Runtime, dict[str, Any]]) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", served[0].app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    failures: list[str] = []
    statuses: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            response = case.call(headers=KEY)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:200]}"
                )

        check()
    assert not failures, failures[:5]
    # the run reached both the happy paths and the validation errors
    assert len(statuses) >= 100 and 200 in statuses and 422 in statuses
