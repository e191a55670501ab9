"""The HTTP handler: GET /healthz answers {"status": "ok"}."""

import json
from http.server import BaseHTTPRequestHandler


def health() -> dict[str, str]:
    return {"status": "ok", "service": "{{ project_id }}"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        if self.path != "/healthz":
            self.send_error(404)
            return
        body = json.dumps(health()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
