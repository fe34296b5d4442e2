"""The OpenAPI document against the live API: schemathesis generates requests from the document
(valid ones and broken ones) and checks every answer: no 500, and status, content type, headers
and body as documented."""

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.engine_helpers import make_job, python_step
from tests.test_api import Api

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 6}


def test_every_documented_operation_answers_as_documented(app):
    # no runner in this app: whatever it queues stays QUEUED, and no generated code ever runs
    make_job(
        app,
        "demo",
        params=[{"name": "n", "type": "int", "default": 1}],
        steps=[python_step("say", "pass")],
    )
    api = Api(app, "ada")  # every permission: the operations get past the guard
    api.post("/jobs/demo/runs", json={})
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, headers=api.headers)
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in EXAMPLES.items():
            try:
                _exercise(operation, mode, examples, api.headers)
            # schemathesis raises a FailureGroup (a BaseExceptionGroup): collect, then fail once
            except (Exception, BaseExceptionGroup) as error:
                failures.append(f"{operation.label} ({mode.value}): {error}")
    assert failures == [], "\n\n".join(failures)


def _exercise(operation, mode, examples, headers):
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every time: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        if case.query:
            case.query.pop("wait", None)  # nothing runs here: waiting would only sleep
        case.call_and_validate(headers=headers, checks=CHECKS)

    check()
