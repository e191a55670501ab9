// Watch an OpenCode-compatible event stream with the real OpenCode SDK (@opencode-ai/sdk), as a client
// written against OpenCode would: `createOpencodeClient({ baseUrl })` then `client.event.subscribe()`.
// Both SDK generations subscribe at once: v1 (`@opencode-ai/sdk`) and v2 (`@opencode-ai/sdk/v2`).
//
// usage: node opencode_sdk_watch.mjs <sdk dir> <base url> <out.json> <sessions to wait for>
// Prints "connected" once both got `server.connected`; exits after `sessions` sessions ended (their
// session.idle and the session.updated after it) on both, writing {"v1": [events], "v2": [events]}.
import { writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const [sdkDir, baseUrl, outFile, sessionsArg] = process.argv.slice(2);
const want = Number(sessionsArg || "1");
const load = (p) => import(pathToFileURL(`${sdkDir}/node_modules/@opencode-ai/sdk/dist/${p}`).href);
const v1sdk = await load("index.js");
const v2sdk = await load("v2/index.js");

const clients = {
  v1: v1sdk.createOpencodeClient({ baseUrl }),
  v2: v2sdk.createOpencodeClient({ baseUrl }),
};
const got = { v1: [], v2: [] };
const connected = new Set();
const timer = setTimeout(() => {
  console.error(`timed out; got v1=${got.v1.length} v2=${got.v2.length} events`);
  writeFileSync(outFile, JSON.stringify(got));
  process.exit(2);
}, 60_000);

function ended(events) {
  const state = new Map();
  for (const e of events) {
    const sid = e.properties && e.properties.sessionID;
    if (!sid) continue;
    if (e.type === "session.idle") state.set(sid, "idle");
    else if (e.type === "session.updated" && state.get(sid) === "idle") state.set(sid, "ended");
  }
  return [...state.values()].filter((s) => s === "ended").length;
}

async function watch(name) {
  const sub = await clients[name].event.subscribe();
  for await (const event of sub.stream) {
    got[name].push(event);
    if (event.type === "server.connected") {
      connected.add(name);
      if (connected.size === 2) console.log("connected");
    }
    if (ended(got[name]) >= want) return;
  }
}

await Promise.all([watch("v1"), watch("v2")]);
clearTimeout(timer);
writeFileSync(outFile, JSON.stringify(got));
console.log("done");
process.exit(0);
