// EvstateStateStore (clients/alchemy) writing through a proxy that fails some answers, for
// tests/integration/test_alchemy_client.py: one set, one delete, then one set with a
// compare-and-set that must be refused (409, "conflict").
//
// stdin: {"url", "token", "password", "chain", "timeoutMs"}
// stdout: {"conflict": {"status", "code", "details"}, "version": n}
import { EvstateStateStore } from "@evstate/alchemy";

const input = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));

const scope = { chain: input.chain, password: input.password, [Symbol.for("alchemy::Scope")]: true };
const store = new EvstateStateStore(scope, {
  url: input.url,
  token: input.token,
  timeoutMs: input.timeoutMs,
  attempts: 4,
});
const state = (seq) => ({
  status: "created",
  kind: "test::Thing",
  id: "k",
  fqn: [...input.chain, "k"].join("/"),
  seq,
  data: {},
  props: { n: seq },
  output: {},
});

await store.set("k", state(1));
await store.delete("k");
await store.set("k", state(2));
const out = { version: await store.version("k") };
try {
  await store.set("k", state(3), { expectedVersion: 0 });
  out.conflict = null;
} catch (error) {
  out.conflict = { status: error.status, code: error.code, details: error.details };
}
process.stdout.write(JSON.stringify(out));
