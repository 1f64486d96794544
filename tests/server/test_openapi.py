"""The gateway's OpenAPI contract: valid, complete, generated from the models it validates with."""

from __future__ import annotations

import dataclasses
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from aim_vllm.core.level import parse_json
from aim_vllm.usage import RequestStats
from server.errors import InvalidRequestError
from server.knob import AIM_SCHEMA, AIM_TEXT_SCHEMA, HEADER, parse_body_knob
from server.openapi import CHAT_REQUEST
from server.schemas import ChatCompletionRequest
from tests.server.fakes import FakeCluster, running_gateway

CHAT = "/v1/chat/completions"
_REF = "#/components/schemas/{model}"


async def _openapi(**overrides: Any) -> dict[str, Any]:
    async with running_gateway(FakeCluster("a"), **overrides) as (_, client):
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


async def test_openapi_json_is_a_valid_openapi_document() -> None:
    """What client generators and Swagger UI read must pass the reference validator."""
    validate(await _openapi())
    validate(await _openapi(api_keys=["sk-test"]))


async def test_every_endpoint_is_documented_with_its_answers() -> None:
    """The chat, models and probe endpoints, their success models and the OpenAI error object."""
    spec = await _openapi()
    paths, schemas = spec["paths"], spec["components"]["schemas"]
    chat = paths[CHAT]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletionRequest"
    )
    assert {"application/json", "text/event-stream"} <= set(chat["responses"]["200"]["content"])
    for status in ("400", "401", "413", "429", "431", "502", "503", "504", "default"):
        assert chat["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ErrorResponse"
        )
    assert "Retry-After" in chat["responses"]["429"]["headers"]
    assert paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/ModelList")
    assert set(paths) >= {CHAT, "/v1/models", "/health", "/ready", "/metrics"}
    assert "503" in paths["/ready"]["get"]["responses"]
    error = schemas["ErrorObject"]
    assert set(error["properties"]) == set(error["required"]) == {"message", "type", "param", "code"}


async def test_request_schema_is_the_validating_model() -> None:
    """No second description: the documented request is `ChatCompletionRequest`'s own JSON schema."""
    schemas = (await _openapi())["components"]["schemas"]
    own = ChatCompletionRequest.model_json_schema(ref_template=_REF)
    defs = own.pop("$defs")
    assert schemas["ChatCompletionRequest"] == own
    assert all(schemas[name] == schema for name, schema in defs.items())
    props = own["properties"]
    assert {"messages", "aim", "stream", "stream_options"} <= set(props)
    assert schemas["ContentPart"]["properties"]["type"]["enum"] == [
        "text",
        "refusal",
        "image_url",
        "video_url",
    ]
    assert set(schemas["StreamOptions"]["properties"]) >= {"include_usage"}


async def test_aim_is_documented_in_text_and_json_forms_and_as_the_header() -> None:
    """Clients learn both forms of the body field and the X-AIM-Level header from the schema."""
    spec = await _openapi()
    aim = spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]["aim"]
    assert aim["anyOf"][0] == AIM_TEXT_SCHEMA
    assert {"preset", "budget", "merge_ratio"} <= {
        key for form in aim["anyOf"][1:] for key in form.get("properties", {})
    }
    (header,) = [p for p in spec["paths"][CHAT]["post"]["parameters"] if p["in"] == "header"]
    assert header["name"] == HEADER and header["schema"] == AIM_TEXT_SCHEMA
    assert CHAT_REQUEST["parameters"][0]["schema"] is AIM_TEXT_SCHEMA


_VALID_LEVELS = [
    "balanced", "budget:0.2", "merge:0.25,prune:14-22", "balanced,encoder:0.5", None,
    {"preset": "max"}, {"preset": "light", "encoder_keep": 0.5}, {"budget": 0.3, "encoder_keep": "auto"},
    {"merge_ratio": 0.25, "prune_layers": [14, 22], "merge_method": "pool", "prune_method": "fastv"},
    {"merge_ratio": 0.5, "prune_layers": [3, 4], "prune_keep": 0.5}, {"encoder_keep": 0.5},
]  # fmt: skip
_SCHEMA_REFUSES = [
    "",
    "x" * 65,
    {},
    {"preset": "max", "turbo": 1},
    {"prune_layers": [1, 2, 3]},
    {"budget": 0},
    7,
]


@pytest.mark.parametrize("level", _VALID_LEVELS, ids=str)
def test_documented_aim_forms_are_what_the_grammar_accepts(level: object) -> None:
    """Every form the schema describes parses with the level grammar (which decides, not the schema)."""
    jsonschema.validate(level, AIM_SCHEMA)
    parse_body_knob(level)


@pytest.mark.parametrize("level", _SCHEMA_REFUSES, ids=str)
def test_levels_the_schema_refuses_the_grammar_refuses(level: object) -> None:
    """The schema is no looser than the grammar on these shapes: a generated client fails early."""
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(level, AIM_SCHEMA)
    with pytest.raises(InvalidRequestError):
        parse_body_knob(level)


def test_text_schema_examples_parse() -> None:
    """The examples Swagger UI offers must be levels."""
    for example in AIM_TEXT_SCHEMA["examples"]:
        parse_json(example)


async def test_usage_aim_documents_every_engine_field_and_the_level() -> None:
    """`usage.aim` is the engine's `RequestStats` plus the gateway's `level`: each field is documented."""
    schemas = (await _openapi())["components"]["schemas"]
    usage_aim = schemas["UsageAim"]
    assert set(usage_aim["properties"]) == {f.name for f in dataclasses.fields(RequestStats)} | {"level"}
    assert usage_aim["required"] == ["level"]
    assert schemas["Usage"]["properties"]["aim"]["$ref"].endswith("/UsageAim")


async def test_security_is_documented_exactly_when_keys_are_required() -> None:
    """The served contract tells clients whether /v1 needs a key; probes never do."""
    open_spec, keyed = await _openapi(), await _openapi(api_keys=["sk-test"])
    assert "security" not in open_spec["paths"][CHAT]["post"]
    assert "securitySchemes" not in open_spec["components"]
    (scheme,) = keyed["components"]["securitySchemes"].values()
    assert scheme == {"type": "http", "scheme": "bearer", "description": "One of the gateway's API keys"}
    assert keyed["paths"][CHAT]["post"]["security"] and keyed["paths"]["/v1/models"]["get"]["security"]
    assert "security" not in keyed["paths"]["/health"]["get"]


async def test_docs_page_and_its_assets_are_served_locally() -> None:
    """/docs must work without internet access: every script and stylesheet comes from the gateway."""
    async with running_gateway(FakeCluster("a"), api_keys=["sk-test"]) as (_, client):
        page = await client.get("/docs")
        assets = [
            await client.get(f"/docs/static/{name}") for name in ("swagger-ui-bundle.js", "swagger-ui.css")
        ]
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/docs/static/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert all(asset.status_code == 200 and len(asset.content) > 10_000 for asset in assets)
