"""schemathesis against the running gateway's /openapi.json, admin API only: with the admin key,
every generated request (schema-valid and schema-violating) is answered without a 5xx, with a
documented status code, content type and a body that matches the documented schema. Half the
requests on /admin/keys/{key_id}... use a real key, so the success responses are checked too.

schemathesis first sends its deterministic coverage cases (boundaries, missing and wrong-typed
fields, unsupported methods: about 300 requests in all), then SCHEMATHESIS_EXAMPLES random cases
per operation (default 10); the example database is off. Run longer with e.g.
`SCHEMATHESIS_EXAMPLES=500 pytest tests/e2e/test_openapi_admin.py`.
"""

from __future__ import annotations

import os
import zlib

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import checks
from schemathesis.schemas import BaseSchema

from tests.e2e.conftest import ADMIN_KEY, Stack
from tests.support import images

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "10"))
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def admin_api(stack: Stack) -> BaseSchema:
    # A ledger to report on: one charged edit and one refused by the upstream (refunded).
    key = stack.create_key(credits=100)
    stack.fault(protocol="openai", kind="status", status=400, times=1, message="no")
    for _ in range(2):
        httpx.post(
            stack.url + "/v1/images/edits",
            headers={"authorization": f"Bearer {key['key']}"},
            data={"model": "gpt-image-1", "prompt": "add a leaf"},
            files={"image": ("a.png", images.png(64, 64), "image/png")},
            timeout=30,
        )
    return schemathesis.openapi.from_url(stack.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("admin_api").include(path_regex="^/admin")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
def test_admin_api_conforms(case: schemathesis.Case, stack: Stack) -> None:
    params = case.path_parameters or {}
    if "key_id" in params and zlib.crc32(repr(params["key_id"]).encode()) % 2:
        # Half the cases act on a real key (a fresh one: DELETE revokes it), not a random id.
        params["key_id"] = stack.create_key(credits=5)["id"]
    case.call_and_validate(headers={"authorization": f"Bearer {ADMIN_KEY}"}, checks=CHECKS)
