"""The one map from errors to HTTP responses: `{"error": <code>, "message": <what to fix>}`."""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from agentd.domain import errors

STATUS: dict[type[errors.AgentdError], int] = {
    errors.InvalidRequest: 400,
    errors.UnknownProvider: 400,
    errors.Unauthorized: 401,
    errors.JobNotFound: 404,
    errors.StreamNotFound: 404,
    errors.JobAlreadyFinished: 409,
    errors.ProjectBusy: 409,
    errors.IdempotencyConflict: 409,
    errors.SecretNotFound: 404,
    errors.ProviderUnavailable: 503,
    errors.QueueUnavailable: 503,
    errors.SecretsUnavailable: 503,
    errors.Forbidden: 403,
    errors.KeyNotFound: 404,
    errors.ProjectNotFound: 404,
    errors.PatchNotFound: 404,
    errors.ProjectInUse: 409,
    errors.UnsupportedMediaType: 415,
    errors.MisdirectedRequest: 421,
    errors.LimitExceeded: 429,
    errors.WorkspaceFailed: 502,  # the git server refused or could not be reached
    errors.ServerBusy: 503,
}


def status_for(exc: errors.AgentdError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    headers = {"WWW-Authenticate": 'ApiKey header="X-API-Key"'} if status == 401 else None
    return web.json_response({"error": code, "message": message, **extra}, status=status, headers=headers)


def from_domain(exc: errors.AgentdError) -> web.Response:
    if isinstance(exc, errors.LimitExceeded):
        retry = max(1, math.ceil(float(exc.details.get("retry_after_s", 1))))
        resp = error_response(status_for(exc), exc.code, exc.message, limit=exc.details.get("limit"))
        resp.headers["Retry-After"] = str(retry)
        return resp
    return error_response(status_for(exc), exc.code, exc.message)


def from_validation(exc: ValidationError) -> web.Response:
    """Pydantic errors → one readable message naming each bad field."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return error_response(400, "invalid_request", "; ".join(parts))
