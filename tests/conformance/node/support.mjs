// Helpers for the Node conformance tests. tests/conformance/test_node_clients.py starts
// a real `shoal serve` and passes SHOAL_URL (http://host:port) and SHOAL_TOKEN (admin).
import assert from "node:assert/strict";

export const BASE = process.env.SHOAL_URL;
export const ADMIN = process.env.SHOAL_TOKEN;
assert.ok(BASE && ADMIN, "run through tests/conformance/test_node_clients.py");

let counter = 0;

async function api(method, path, body, token = ADMIN) {
  const resp = await fetch(BASE + path, {
    method,
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  assert.ok(resp.ok, `${method} ${path}: ${resp.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Create a fresh database through the native API and return its name. */
export async function newDatabase(prefix) {
  const name = `${prefix}-${process.pid}-${counter++}`;
  await api("POST", "/v1/databases", { name });
  return name;
}

/** A token for the given databases and access ("read", "write", "admin"). */
export async function newToken(databases, access) {
  const out = await api("POST", "/v1/tokens", { databases, access, expires_in: 600 });
  return out.token;
}

/** The client URL of a database over "http" or "ws" (with the trailing slash for HTTP). */
export function dbUrl(transport, name) {
  const url = new URL(BASE);
  if (transport === "ws") {
    return `ws://${url.host}/db/${name}`;
  }
  return `http://${url.host}/db/${name}/`;
}
