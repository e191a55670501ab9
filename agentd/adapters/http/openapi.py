"""The OpenAPI 3.1 document (`GET /openapi.json`) and the docs page (`GET /docs`), from one route table.

Schemas come from the pydantic models the handlers use (agentd.wire for requests, answers and errors; the
domain's event models for the event stream). tests/integration/test_openapi.py fails when the app has a
route this table does not describe, or the table describes one the app does not have: describing a new
route is one `Op(...)` line below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from agentd import __version__
from agentd.domain.ids import JOB_ID_RE
from agentd.domain.models import (
    DoneEvent,
    ErrorEvent,
    JobStatus,
    OutputEvent,
    ReasoningEvent,
    SessionEvent,
    StatusEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)
from agentd.domain.projects import ProjectSpec
from agentd.wire import (
    PROJECT_ID_PATTERN,
    DeliveryList,
    ErrorBody,
    Health,
    JobInfo,
    JobPage,
    KeyBody,
    KeyCreated,
    KeyInfo,
    KeyList,
    ProjectInfo,
    ProjectList,
    Providers,
    SecretList,
    SecretValue,
    SubmitBody,
    Submitted,
    TemplateList,
    anchored,
)

EVENT_MODELS: list[type[BaseModel]] = [
    StatusEvent,
    SessionEvent,
    TextEvent,
    ReasoningEvent,
    ToolUseEvent,
    ToolResultEvent,
    OutputEvent,
    ErrorEvent,
    DoneEvent,
]
Special = Literal["sse", "html", "prometheus", "json-object", "static", "opencode-sse", "diff"]
SSE: Special = "sse"
HTML: Special = "html"
PROM: Special = "prometheus"
JSON_OBJECT: Special = "json-object"
STATIC: Special = "static"
OPENCODE_SSE: Special = "opencode-sse"
DIFF: Special = "diff"
Answer = type[BaseModel] | Special | None
Refs = dict[tuple[Any, str], Any]


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "header", "path"]
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Op:
    """One route: method, path (aiohttp's spelling), a summary, the body model, the answers by status."""

    method: str
    path: str
    summary: str
    answers: dict[int, Answer]
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    tag: str = "jobs"
    public: bool = False  # needs no API key
    optional: bool = False  # only in some configurations (e.g. /metrics on the API port)
    extra: dict[str, Any] = field(default_factory=dict)


PROJECT = Param("project_id", "path", {"type": "string", "pattern": PROJECT_ID_PATTERN}, "e.g. my-repo")
JOB = Param("job_id", "path", {"type": "string"}, "job_…")
STREAM = Param("stream_id", "path", {"type": "string"}, "stm_…")
NAME = Param("name", "path", {"type": "string", "pattern": "^[A-Z_][A-Z0-9_]{0,127}$"}, "e.g. GITHUB_TOKEN")
IDEMPOTENCY = Param(
    "Idempotency-Key",
    "header",
    {"type": "string", "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]{0,198}[\\x21-\\x7e])?$"},
    "the same key + body: same job",
)
KEY = Param("key_id", "path", {"type": "string", "pattern": "^key_[0-9a-f]{16}$"}, "key_…")
FILE = Param("name", "path", {"type": "string"}, "app.js, style.css")
PROJECT_FILTER = Param(
    "project_id",
    "query",
    {"type": "string", "anyOf": [PROJECT.schema, {"maxLength": 0}]},
    "only this project's",
)
LIST_QUERY = (
    Param("status", "query", {"type": "string", "enum": [s.value for s in JobStatus]}),
    Param("provider", "query", {"type": "string"}),
    Param("created_after", "query", {"type": "string", "anyOf": [{"format": "date-time"}, {"maxLength": 0}]}),
    Param(
        "created_before", "query", {"type": "string", "anyOf": [{"format": "date-time"}, {"maxLength": 0}]}
    ),
    Param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}),
    Param(
        "before",
        "query",
        {"type": "string", "anyOf": [{"pattern": anchored(JOB_ID_RE.pattern)}, {"maxLength": 0}]},
        "a job id: the next (older) page",
    ),
)
RESUME = (
    Param(
        "after",
        "query",
        {"type": "integer", "minimum": 0, "maximum": 2**62},
        "replay the events after this sequence number",
    ),
    Param(
        "Last-Event-ID",
        "header",
        {"type": "string", "pattern": "^[0-9]*$"},
        "what a reconnecting client sends",
    ),
)
SECRETS = (
    ("/projects/{project_id}/secrets", (PROJECT,), "the project's"),
    ("/secrets", (), "global (every project's)"),
)

ROUTES: list[Op] = [
    Op("GET", "/healthz", "liveness", {200: Health}, tag="service", public=True),
    Op("GET", "/openapi.json", "this document", {200: JSON_OBJECT}, tag="service", public=True),
    Op("GET", "/docs", "the API documentation, as a page", {200: HTML}, tag="service", public=True),
    Op("GET", "/metrics", "Prometheus metrics", {200: PROM}, tag="service", optional=True),
    Op(
        "GET", "/providers", "providers, their capabilities and availability", {200: Providers}, tag="service"
    ),
    Op("GET", "/", "the dashboard", {200: HTML}, tag="dashboard", public=True),
    Op(
        "GET",
        "/dashboard/{name}",
        "the dashboard's files",
        {200: STATIC},
        params=(FILE,),
        tag="dashboard",
        public=True,
    ),
    Op(
        "GET",
        "/jobs",
        "every project's jobs, newest first",
        {200: JobPage},
        params=(PROJECT_FILTER, *LIST_QUERY),
    ),
    Op(
        "GET",
        "/opencode/event",
        "OpenCode's /event stream, every project's jobs",
        {200: OPENCODE_SSE},
        tag="opencode",
    ),
    Op(
        "GET",
        "/projects/{project_id}/opencode/event",
        "OpenCode's /event stream, one project's jobs",
        {200: OPENCODE_SSE},
        params=(PROJECT,),
        tag="opencode",
    ),
    Op(
        "POST",
        "/projects/{project_id}/jobs",
        "submit a prompt: a job, and the URL of its event stream",
        {202: Submitted, 200: Submitted, 409: ErrorBody},
        body=SubmitBody,
        params=(PROJECT, IDEMPOTENCY),
    ),
    Op(
        "POST",
        "/projects/{project_id}/claude",
        "submit a prompt to claude-code",
        {202: Submitted, 200: Submitted, 409: ErrorBody},
        body=SubmitBody,
        params=(PROJECT, IDEMPOTENCY),
    ),
    Op(
        "GET",
        "/projects/{project_id}/jobs",
        "the project's jobs, newest first",
        {200: JobPage},
        params=(PROJECT, *LIST_QUERY),
    ),
    Op("GET", "/projects/{project_id}/jobs/{job_id}", "one job", {200: JobInfo}, params=(PROJECT, JOB)),
    Op(
        "POST",
        "/projects/{project_id}/jobs/{job_id}/cancel",
        "cancel a job (queued: at once; running: 202, then done)",
        {200: JobInfo, 202: JobInfo, 409: ErrorBody},
        params=(PROJECT, JOB),
    ),
    Op(
        "GET",
        "/projects/{project_id}/jobs/{job_id}/deliveries",
        "the job's webhook deliveries and their attempts",
        {200: DeliveryList},
        params=(PROJECT, JOB),
        tag="webhooks",
    ),
    Op(
        "GET",
        "/projects/{project_id}/events/{stream_id}",
        "the job's events (Server-Sent Events), replayed then live, ending after done",
        {200: SSE},
        params=(PROJECT, STREAM, *RESUME),
    ),
    Op("POST", "/keys", "admin: create a key (shown once)", {201: KeyCreated}, body=KeyBody, tag="keys"),
    Op("GET", "/keys", "admin: every key (never a key's value)", {200: KeyList}, tag="keys"),
    Op("DELETE", "/keys/{key_id}", "admin: revoke a key", {200: KeyInfo}, params=(KEY,), tag="keys"),
    Op("GET", "/projects", "every project", {200: ProjectList}, tag="projects"),
    Op(
        "PUT",
        "/projects/{project_id}",
        "create (201) or update a project: a git repository, a template",
        {200: ProjectInfo, 201: ProjectInfo},
        body=ProjectSpec,
        params=(PROJECT,),
        tag="projects",
    ),
    Op("GET", "/projects/{project_id}", "one project", {200: ProjectInfo}, params=(PROJECT,), tag="projects"),
    Op(
        "DELETE", "/projects/{project_id}", "delete a project", {204: None}, params=(PROJECT,), tag="projects"
    ),
    Op(
        "GET",
        "/projects/{project_id}/jobs/{job_id}/patch",
        "the job's changes as a patch",
        {200: DIFF},
        params=(PROJECT, JOB),
        tag="projects",
    ),
    Op("GET", "/templates", "the project templates", {200: TemplateList}, tag="projects"),
    *(
        op
        for prefix, scope, whose in SECRETS
        for op in (
            Op("GET", prefix, f"{whose} secrets: names only", {200: SecretList}, params=scope, tag="secrets"),
            Op(
                "PUT",
                prefix + "/{name}",
                f"set one of {whose} secrets",
                {204: None},
                body=SecretValue,
                params=(*scope, NAME),
                tag="secrets",
            ),
            Op(
                "DELETE",
                prefix + "/{name}",
                f"delete one of {whose} secrets",
                {204: None},
                params=(*scope, NAME),
                tag="secrets",
            ),
        )
    ),
]


def _schemas(routes: list[Op]) -> tuple[Refs, dict[str, Any]]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [(ErrorBody, "serialization")]
    wanted += [(m, "serialization") for m in EVENT_MODELS]
    for op in routes:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        wanted += [(a, "serialization") for a in op.answers.values() if isinstance(a, type)]
    refs, defs = models_json_schema(list(dict.fromkeys(wanted)), ref_template="#/components/schemas/{model}")
    out: Refs = {(model, mode): ref for (model, mode), ref in refs.items()}
    return out, defs.get("$defs", {})


def _event_stream_item(refs: Refs) -> dict[str, Any]:
    """One SSE message: `id` (1, 2, 3… without gaps), `event` (the type), `data` (that type's JSON)."""
    variants = []
    for m in EVENT_MODELS:
        name = m.model_fields["event"].default
        variants.append(
            {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "event": {"const": name},
                    "data": refs[(m, "serialization")],
                },
                "required": ["id", "event", "data"],
            }
        )
    return {"oneOf": variants}


def _content(answer: Answer, refs: Refs) -> dict[str, Any] | None:
    if answer is None:
        return None
    if answer == SSE:
        return {
            "text/event-stream": {
                "schema": {"type": "string", "description": "id:/event:/data: messages; see x-itemSchema"},
                "x-itemSchema": _event_stream_item(refs),
            }
        }
    if answer == HTML:
        return {"text/html": {"schema": {"type": "string"}}}
    if answer == STATIC:
        types = ("text/html", "text/css", "text/javascript", "application/javascript")
        return {t: {"schema": {"type": "string"}} for t in types}
    if answer == DIFF:
        return {
            "text/x-diff": {"schema": {"type": "string", "description": "git diff --binary; git apply it"}}
        }
    if answer == OPENCODE_SSE:
        return {
            "text/event-stream": {
                "schema": {
                    "type": "string",
                    "description": "OpenCode's /event protocol (its SDK's Event type)",
                }
            }
        }
    if answer == PROM:
        return {"text/plain": {"schema": {"type": "string"}}}
    if answer == JSON_OBJECT:
        return {"application/json": {"schema": {"type": "object"}}}
    assert isinstance(answer, type)
    return {"application/json": {"schema": refs[(answer, "serialization")]}}


def _operation_id(op: Op) -> str:
    words = "".join(c if c.isalnum() else "_" for c in op.path).strip("_")
    return f"{op.method.lower()}_{'_'.join(w for w in words.split('_') if w)}"


def _operation(op: Op, refs: Refs) -> dict[str, Any]:
    error = {"application/json": {"schema": refs[(ErrorBody, "serialization")]}}
    responses: dict[str, Any] = {}
    for status, answer in sorted(op.answers.items()):
        entry: dict[str, Any] = {"description": op.summary if status < 300 else "error"}
        content = error if answer is ErrorBody else _content(answer, refs)
        if content:
            entry["content"] = content
        responses[str(status)] = entry
    responses["default"] = {
        "description": "an error: `error` is a stable code, `message` says what to fix",
        "content": error,
    }
    out: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
        **op.extra,
    }
    if op.params:
        out["parameters"] = [
            {"name": p.name, "in": p.where, "required": p.where == "path", "schema": p.schema}
            | ({"description": p.description} if p.description else {})
            for p in op.params
        ]
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    if op.public:
        out["security"] = []
    return out


def document(routes: list[Op] | None = None, *, providers: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `routes` (default: every route agentd has); `providers` (the names a
    server has) become enums of the `provider` fields."""
    routes = ROUTES if routes is None else routes
    refs, defs = _schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for op in routes:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    if providers:
        _provider_enum(defs, paths, providers)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agentd",
            "version": __version__,
            "description": "Run code agents on demand: submit a prompt for a project, follow its events.",
        },
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "security": [{"ApiKey": []}],
    }


def _provider_enum(defs: dict[str, Any], paths: dict[str, Any], names: list[str]) -> None:
    enum = {"type": "string", "enum": list(names)}
    if "SubmitBody" in defs:
        defs["SubmitBody"]["properties"]["provider"]["anyOf"] = [enum, {"type": "null"}]
    for ops in paths.values():
        for op in ops.values():
            for p in op.get("parameters", []):
                if p["name"] == "provider" and p["in"] == "query":
                    p["schema"] = {"type": "string", "enum": [*names, ""]}  # empty: any provider


def routes_of(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves (HEAD beside GET is aiohttp's, not ours)."""
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method in ("HEAD", "*") or path is None:
            continue
        out.add((route.method, str(path)))
    return out


@dataclass
class _Served:
    providers: Callable[[], list[str]] | None = None
    document: dict[str, Any] | None = None  # built at the first request: routes are fixed by then


SERVED = web.AppKey("openapi", _Served)


def served_document(app: web.Application) -> dict[str, Any]:
    """The document for this app: the routes it serves, the providers it has."""
    served = routes_of(app)
    providers = app[SERVED].providers if SERVED in app else None
    return document(
        [op for op in ROUTES if (op.method, op.path) in served], providers=providers() if providers else None
    )


async def openapi_json(request: web.Request) -> web.Response:
    served = request.app[SERVED]
    if served.document is None:
        served.document = served_document(request.app)
    return web.json_response(served.document)


async def docs_page(request: web.Request) -> web.Response:
    html = resources.files("agentd.adapters.http").joinpath("docs.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-cache"})


def install(app: web.Application, *, providers: Callable[[], list[str]] | None = None) -> None:
    """`GET /openapi.json` and `GET /docs`."""
    app[SERVED] = _Served(providers)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs_page)
