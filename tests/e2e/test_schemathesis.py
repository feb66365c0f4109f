"""The API against its own OpenAPI document: schemathesis reads `GET /fleet/openapi.json` from a
real `fleet serve`, generates requests for every operation it describes (valid ones and
invalid ones), sends them, and checks that no answer is a server error and that every answer
is one the document allows (its status, content type, headers and body schema).

Whatever the document says is what is checked: the test names no operation of its own.

(schemathesis's pytest loader `from_fixture` does not run under pytest 9, so the operations are
driven from one test, each in its own subtest, with schemathesis's Hypothesis strategies.)
"""
from __future__ import annotations

import hypothesis.errors
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode, checks

from shared.devhost.process import running_server

pytestmark = pytest.mark.e2e

#: Generated requests per operation and mode (valid, invalid): with about 25 operations, a
#: few hundred requests, well under a minute on the two-core CI machine.
EXAMPLES = 10

#: The stateless checks: no 5xx, and nothing the document does not allow. (Not the checks that
#: need state: a valid request naming a job that does not exist is rightly a 404.)
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]

#: The same examples on every run (CI must not pass or fail by luck), none kept between runs,
#: and no shrinking: a failure is reported as found, within the time budget.
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))


def test_every_answer_is_one_the_document_allows(subtests):
    env = {"FLEET_BUDGETS": "1", "FLEET_PREEMPTION": "1", "FLEET_FUNCTION_KEYS": None}
    with running_server(env=env, args=("--no-timers",)) as server, requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {server.admin_token}"  # auth on, as an admin
        schema = schemathesis.openapi.from_url(f"{server.url}/fleet/openapi.json", config=schemathesis.Config(),
                                               timeout=10)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert operations, "the document describes no operation"
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                with subtests.test(msg=f"{operation.label} ({mode.value})"):

                    @BOUNDED
                    @given(case=operation.as_strategy(generation_mode=mode))
                    def conforms(case):
                        case.call_and_validate(base_url=server.url, session=session, checks=CHECKS, timeout=10)

                    try:
                        conforms()
                    except hypothesis.errors.Unsatisfiable:
                        if mode is GenerationMode.POSITIVE:
                            raise
                        pytest.skip("nothing in this operation can be made invalid")  # no parameters, no body
        assert server.returncode is None  # still serving
        assert "Traceback" not in server.log()
