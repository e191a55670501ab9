"""Serve the app: `python -m app [port]`."""

import sys
from http.server import ThreadingHTTPServer

from app.main import Handler

port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
