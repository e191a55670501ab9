#!/usr/bin/env bash
# agentd CI step: run one agent job and exit with its outcome (the Woodpecker plugin's entrypoint; the
# GitHub action runs it too). Settings arrive as PLUGIN_* variables (Woodpecker's `settings:`):
#   server   (PLUGIN_SERVER, required)  agentd URL, e.g. https://agentd.internal
#   key      (PLUGIN_KEY)               API key; use `from_secret` (sent as X-API-Key, never printed)
#   project  (PLUGIN_PROJECT, required) project id, e.g. my-repo
#   prompt   (PLUGIN_PROMPT, required)  the prompt
#   provider (PLUGIN_PROVIDER)          claude-code | opencode | … (default: the server's default)
#   model    (PLUGIN_MODEL)             model name for the provider
#   timeout  (PLUGIN_TIMEOUT)           seconds before the job times out
# Exit code: agentd's — 0 succeeded, 1 failed, 2 usage or connection error, 124 timed out, 130 cancelled.
set -euo pipefail

AGENTD_BIN=${AGENTD_BIN:-agentd}

missing=()
[ -n "${PLUGIN_SERVER:-}" ] || missing+=(server)
[ -n "${PLUGIN_PROJECT:-}" ] || missing+=(project)
[ -n "${PLUGIN_PROMPT:-}" ] || missing+=(prompt)
if [ ${#missing[@]} -gt 0 ]; then
  echo "agentd plugin: missing setting(s): ${missing[*]} (set them under the step's settings:)" >&2
  exit 2
fi
if [ -n "${PLUGIN_TIMEOUT:-}" ] && ! [[ "$PLUGIN_TIMEOUT" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "agentd plugin: timeout must be a number of seconds, got '${PLUGIN_TIMEOUT}'" >&2
  exit 2
fi

args=(submit --follow --server "$PLUGIN_SERVER" --project "$PLUGIN_PROJECT")
[ -z "${PLUGIN_PROVIDER:-}" ] || args+=(--provider "$PLUGIN_PROVIDER")
[ -z "${PLUGIN_MODEL:-}" ] || args+=(--model "$PLUGIN_MODEL")
[ -z "${PLUGIN_TIMEOUT:-}" ] || args+=(--timeout "$PLUGIN_TIMEOUT")

# The key goes through the environment, not the command line (other processes can read argv).
if [ -n "${PLUGIN_KEY:-}" ]; then
  export AGENTD_API_KEY="$PLUGIN_KEY"
fi
unset PLUGIN_KEY

# The prompt goes through stdin: no length limit, and a prompt starting with '-' is not an option.
exec "$AGENTD_BIN" "${args[@]}" - <<<"$PLUGIN_PROMPT"
