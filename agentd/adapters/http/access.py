"""Who may do what, for every route module: the request's principal (set by the auth middleware in
app.py) and the checks a handler makes before it touches a project, a job or an admin resource."""

from __future__ import annotations

from contextvars import ContextVar

import structlog
from aiohttp import web

from agentd.domain import errors
from agentd.domain.ids import JOB_ID_RE
from agentd.domain.keys import Principal
from agentd.domain.models import validate_project_id

log = structlog.get_logger(__name__)

# The request's principal, set by the app's middleware once it knows who is asking. A context variable, not a
# request key: aiohttp runs every request in a task of its own, with its own copy of the context, and a key in
# the request's state dict would cost every open event stream a table of its own (~160 bytes).
_PRINCIPAL: ContextVar[Principal | None] = ContextVar("agentd_principal", default=None)


def set_principal(who: Principal) -> None:
    """Who is asking, for the rest of the request being handled in this task."""
    _PRINCIPAL.set(who)


def principal_or_none() -> Principal | None:
    """The principal of the request being handled (None before the middleware knows it)."""
    return _PRINCIPAL.get()


def printable(text: str, limit: int = 200) -> str:
    return repr(text[:limit])[1:-1]


def principal(request: web.Request) -> Principal:
    """The principal of `request` (the one being handled in this task)."""
    p = _PRINCIPAL.get()
    if p is None:
        raise RuntimeError(f"no principal for {request.method} {printable(request.path)}: auth did not run")
    return p


def refuse(request: web.Request, error: errors.AgentdError) -> errors.AgentdError:
    log.info(
        "auth.refused",
        key_id=principal(request).key_id,
        method=request.method,
        path=printable(request.path),
        reason=error.code,
    )
    return error


def project(request: web.Request, *, write: bool = False, hidden: errors.AgentdError | None = None) -> str:
    """The route's project, if this key may see it (else `hidden`: the answer an unknown id gets) and, for
    a write, may write (else 403)."""
    project_id = validate_project_id(request.match_info["project_id"])
    who = principal(request)
    if not who.sees(project_id) or (who.stream_id is not None and write):
        raise refuse(request, hidden or errors.ProjectNotFound(f"no project {project_id!r}"))
    if write and not who.write:
        raise refuse(request, errors.Forbidden(f"key {who.key_id} is read-only: it cannot {request.method}"))
    return project_id


def job(request: web.Request) -> tuple[str, str]:
    """(project, job id) of a job route; a hidden project answers as an unknown job would."""
    project_id = validate_project_id(request.match_info["project_id"])
    job_id = request.match_info["job_id"]
    unknown = errors.JobNotFound(f"no job {job_id!r} in project {project_id!r}")
    if not JOB_ID_RE.fullmatch(job_id):
        raise unknown
    project(request, write=request.method != "GET", hidden=unknown)
    return project_id, job_id


def admin(request: web.Request, *, write: bool) -> Principal:
    who = principal(request)
    if not who.admin:
        raise refuse(request, errors.Forbidden(f"key {who.key_id} is not an admin key"))
    if write and not who.write:
        raise refuse(request, errors.Forbidden(f"key {who.key_id} is read-only: it cannot {request.method}"))
    return who
