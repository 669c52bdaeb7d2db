// The store contract (tests/contract.py) through EvstateStateStore (clients/alchemy), for
// tests/integration/test_js_contract.py. Runs inside a project whose node_modules hold
// alchemy and @evstate/alchemy (see tests/_alchemy.py, client_project).
//
// One JSON request a line on stdin, one JSON answer a line on stdout, in order:
//   {"url", "token", "chain", "password", "method", "params"}
//   -> {"result": ...} | {"error": {"name", "status", "message"}}
// States cross as Alchemy's serialized JSON: a state to `set` is deserialized with
// Alchemy's serde before the client gets it, and states the client returns are
// serialized again, so the Python side sees what an Alchemy app would have held.
import { deserialize, serialize } from "alchemy";
import { EvstateStateStore } from "@evstate/alchemy";
import readline from "node:readline";

const scopeOf = (chain, password) => ({
  chain,
  password,
  [Symbol.for("alchemy::Scope")]: true,
});

async function states(scope, byId) {
  const out = {};
  for (const [id, state] of Object.entries(byId)) out[id] = await serialize(scope, state);
  return out;
}

async function run({ url, token, chain, password, method, params }) {
  const scope = scopeOf(chain, password);
  const store = new EvstateStateStore(scope, { url, token, attempts: 1 });
  switch (method) {
    case "init":
    case "deinit":
      await store[method]();
      return null;
    case "list":
    case "count":
      return await store[method]();
    case "get": {
      const state = await store.get(params[0]);
      return state === undefined ? null : await serialize(scope, state);
    }
    case "getBatch":
      return await states(scope, await store.getBatch(params[0]));
    case "all":
      return await states(scope, await store.all());
    case "set":
      await store.set(params[0], await deserialize(scope, params[1]));
      return null;
    case "delete":
      await store.delete(params[0]);
      return null;
    default:
      throw new Error(`unknown method ${method}`);
  }
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  let answer;
  try {
    answer = { result: await run(JSON.parse(line)) };
  } catch (error) {
    answer = {
      error: { name: error?.name, status: error?.status ?? null, message: String(error?.message) },
    };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
