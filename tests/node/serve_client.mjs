// EvstateStateStore (clients/alchemy) against a running `evstate serve`, for
// tests/integration/test_alchemy_client.py. Runs inside a project whose node_modules hold
// alchemy and @evstate/alchemy.
//
// stdin: {"url", "token", "password", "chain": [...], "op": "methods" | "read" | "errors"}
//   methods: every StateStore method on a state with a secret, a date and a "/" in its id
//   read:    all() of the scope, described in plain JSON ({"$secret": plaintext}, ...)
//   errors:  what the store throws for a wrong token, a bad key, no server, a slow one
//            (tried twice)
//   badTokens: what it throws for tokens with a newline at the end or inside
//   notes:   a set through a store with reason, correlationId and onBehalfOf options
//   hold:    two stores of one stage with `lock`, holding its lease for "holdMs"
import { isSecret, secret } from "alchemy";
import { EvstateStateStore, EvstateStateStoreError } from "@evstate/alchemy";
import net from "node:net";

const input = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));

const scopeOf = (chain) => ({
  chain,
  password: input.password,
  [Symbol.for("alchemy::Scope")]: true,
});
const scope = scopeOf(input.chain);
const options = { url: input.url, token: input.token };

function describe(value) {
  if (isSecret(value)) return { $secret: value.unencrypted };
  if (value instanceof Date) return { $date: value.toISOString() };
  if (value === scope) return { $scope: true };
  if (Array.isArray(value)) return value.map(describe);
  if (value && typeof value === "object") {
    const out = {};
    for (const key of Reflect.ownKeys(value)) out[key.toString()] = describe(value[key]);
    return out;
  }
  return value;
}

async function failure(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return {
      name: error.name,
      isStoreError: error instanceof EvstateStateStoreError,
      status: error.status ?? null,
      method: error.method ?? null,
      message: error.message,
    };
  }
}

const out = {};
if (input.op === "methods") {
  const store = new EvstateStateStore(scope, options);
  const child = new EvstateStateStore(scopeOf([...input.chain, "child"]), options);
  const id = "bucket/main";
  const state = {
    status: "created",
    kind: "test::Bucket",
    id,
    fqn: [...input.chain, id].join("/"),
    seq: 1,
    data: {},
    props: { name: "main", apiKey: secret("js-secret ☃"), at: new Date("2024-01-02T03:04:05.678Z") },
    output: { arn: "arn:test:main" },
  };
  await store.init();
  await store.set(id, state);
  await store.set("other", { ...state, id: "other", fqn: `${input.chain.join("/")}/other` });
  await child.set("inner", { ...state, id: "inner", fqn: `${input.chain.join("/")}/child/inner` });
  out.list = (await store.list()).sort();
  out.count = await store.count();
  out.get = describe(await store.get(id));
  out.scopeAttached = (await store.get(id)).output[Symbol.for("alchemy::ResourceScope")] === scope;
  out.missing = (await store.get("missing")) === undefined;
  out.batch = Object.keys(await store.getBatch([id, "missing"]));
  out.emptyBatch = await store.getBatch([]);
  out.all = Object.keys(await store.all()).sort();
  out.listScopes = await store.listScopes();
  await store.delete("other");
  await store.delete("never-there");
  out.afterDelete = await store.list();
  await child.deinit();
  out.childAfterDeinit = await child.list();
  out.parentAfterChildDeinit = await store.list();
  out.tokenHidden = !JSON.stringify(store).includes(input.token) && !Object.values(store).includes(input.token);
} else if (input.op === "notes") {
  const notes = { reason: "deploy #42", correlationId: "ci-run-7", onBehalfOf: "alice@example.com" };
  const store = new EvstateStateStore(scope, { ...options, ...notes });
  await store.set("noted", {
    status: "created", kind: "test::Note", id: "noted", fqn: "noted", seq: 1, data: {},
    props: {}, output: {},
  });
  out.ok = true;
  out.badOption = await failure(
    Promise.resolve().then(() => new EvstateStateStore(scope, { ...options, reason: 7 })),
  );
} else if (input.op === "read") {
  const store = new EvstateStateStore(scope, options);
  out.all = describe(await store.all());
} else if (input.op === "errors") {
  const store = new EvstateStateStore(scope, options);
  out.wrongToken = await failure(new EvstateStateStore(scope, { ...options, token: "wrong" }).list());
  out.badKey = await failure(store.get("a:b"));
  out.noToken = await failure(
    Promise.resolve().then(() => {
      delete process.env.EVSTATE_TOKEN;
      return new EvstateStateStore(scope, { url: input.url });
    }),
  );
  out.unreachable = await failure(
    new EvstateStateStore(scope, { url: input.deadUrl, token: "t", attempts: 2 }).list(),
  );
  // A server that accepts the connection and never answers.
  const silent = net.createServer(() => {});
  await new Promise((resolve) => silent.listen(0, "127.0.0.1", resolve));
  const slowUrl = `http://127.0.0.1:${silent.address().port}/`;
  out.timeout = await failure(
    new EvstateStateStore(scope, { url: slowUrl, token: "t", timeoutMs: 300, attempts: 2 }).count(),
  );
  silent.close();
} else if (input.op === "badTokens") {
  // A token read from a file with its trailing newline, and one with a line break inside.
  const tokens = { trailing: `${input.token}\n`, inner: `x\n${input.token}` };
  for (const [name, token] of Object.entries(tokens)) {
    let store = null;
    const construct = await failure(
      Promise.resolve().then(() => {
        store = new EvstateStateStore(scope, { url: input.url, token, attempts: 5 });
      }),
    );
    const call = store === null ? null : await failure(store.list());
    out[name] = { construct, call };
  }
  out.tokenEchoed = JSON.stringify(out).includes(input.token);
} else if (input.op === "hold") {
  const lock = { ttl: input.ttl, info: { job: "hold-test" } };
  const store = new EvstateStateStore(scope, { ...options, lock });
  const child = new EvstateStateStore(scopeOf([...input.chain, "child"]), { ...options, lock });
  out.list = await store.list();
  out.childList = await child.list();
  await new Promise((resolve) => setTimeout(resolve, input.holdMs));
} else {
  throw new Error(`unknown op ${input.op}`);
}
process.stdout.write(JSON.stringify(out));
process.exit(0);
