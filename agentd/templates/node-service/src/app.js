// The request handler: GET /healthz answers {"status": "ok"}.
export function health() {
  return { status: "ok", service: "{{ project_id }}" };
}

export function handler(req, res) {
  if (req.method !== "GET" || req.url !== "/healthz") {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { "Content-Type": "application/json" }).end(JSON.stringify(health()));
}
