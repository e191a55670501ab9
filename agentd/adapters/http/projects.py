"""The projects API: PUT/GET/DELETE /projects/{project_id}, GET /projects, GET /templates, and a job's
patch at GET /projects/{project_id}/jobs/{job_id}/patch (text/x-diff).

Access: PUT/DELETE need write access to the project, GET and the patch read access (a project the key may
not see answers as an unknown one); GET /projects lists the key's own projects (every one for an admin
key); GET /templates needs any valid key."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from agentd.adapters.http import access
from agentd.domain import errors
from agentd.services.projects import ProjectService

PROJECTS = web.AppKey("projects", ProjectService)


def add_project_routes(app: web.Application, service: ProjectService) -> None:
    app[PROJECTS] = service
    app.router.add_get("/projects", list_projects)
    app.router.add_put("/projects/{project_id}", put_project)
    app.router.add_get("/projects/{project_id}", get_project)
    app.router.add_delete("/projects/{project_id}", delete_project)
    app.router.add_get("/projects/{project_id}/jobs/{job_id}/patch", get_patch)
    app.router.add_get("/templates", list_templates)


async def _json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.InvalidRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest(
            'body must be a JSON object, e.g. {"git": {"url": "https://github.com/org/repo.git"}}'
        )
    return body


async def put_project(request: web.Request) -> web.Response:
    project_id = access.project(request, write=True)
    project, created = await request.app[PROJECTS].put(project_id, await _json_object(request))
    return web.json_response(
        project.public(),
        status=201 if created else 200,
        headers={"Location": f"/projects/{project_id}"} if created else None,
    )


async def get_project(request: web.Request) -> web.Response:
    project = await request.app[PROJECTS].get(access.project(request))
    return web.json_response(project.public())


async def list_projects(request: web.Request) -> web.Response:
    who = access.principal(request)
    projects = [p for p in await request.app[PROJECTS].list_projects() if who.sees(p.id)]
    return web.json_response({"projects": [p.public() for p in projects]})


async def delete_project(request: web.Request) -> web.Response:
    await request.app[PROJECTS].delete(access.project(request, write=True))
    return web.Response(status=204)


async def list_templates(request: web.Request) -> web.Response:
    templates = request.app[PROJECTS].list_templates()
    return web.json_response({"templates": [t.model_dump(mode="json") for t in templates]})


async def get_patch(request: web.Request) -> web.Response:
    project_id, job_id = access.job(request)
    patch = await request.app[PROJECTS].patch(project_id, job_id)
    return web.Response(
        body=patch,
        headers={
            "Content-Type": "text/x-diff",
            "Content-Disposition": f'attachment; filename="{job_id}.patch"',
        },
    )
