"""JSON for the hot paths (agent output lines, event frames): orjson's speed, the stdlib's results.

`loads` parses with orjson and hands anything orjson refuses (NaN/Infinity, integers beyond 64 bits, lone
surrogates, invalid JSON) to `json.loads`, so every result and every error is exactly what `json.loads` gives.
On the recorded CLI output (bench/bench_protocol.py) this makes parsing 2 to 5 times faster.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["JSONDecodeError", "loads"]

JSONDecodeError = json.JSONDecodeError


def loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
