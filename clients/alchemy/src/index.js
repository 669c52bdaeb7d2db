// EvstateStateStore: Alchemy's StateStore over `evstate serve`.
//
// Each call is one `POST <url>` with {"method", "params", "context": {"chain"}}, the
// protocol of Alchemy's own remote state service. States are serialized here, with
// Alchemy's serde (secrets encrypted with the app's password), and the server stores
// them as they are; what it answers is deserialized here again. The server never sees
// a plaintext secret or the password.
//
// Every set and delete carries an idempotency key (a uuid per call, the same across that
// call's retries), so a retry after a 503 or a timeout never writes a second event. With
// `lock: true` the stores of one app/stage share a lease on it (lease.js).
import { deserialize, ResourceScope, serialize } from "alchemy";
import { randomUUID } from "node:crypto";
import { leaseFor, lockTokenFromEnv, stageOf } from "./lease.js";
import { checkToken, EvstateStateStoreError, plain, request } from "./request.js";

export { EvstateStateStoreError };

const DEFAULT_URL = "http://127.0.0.1:8787";
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_ATTEMPTS = 5;

/**
 * Alchemy's `StateStore`, kept in evstate:
 * `stateStore: (scope) => new EvstateStateStore(scope, { url, token })`.
 */
export class EvstateStateStore {
  #endpoint;
  #lock;
  #envLock;

  constructor(scope, options = {}) {
    this.scope = scope;
    this.url = new URL(options.url ?? process.env.EVSTATE_URL ?? DEFAULT_URL).href;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.attempts = Math.max(1, options.attempts ?? DEFAULT_ATTEMPTS);
    this.consistency = options.consistency;
    this.lock = Boolean(options.lock);
    // What every request tells the server about itself (recorded on the events it writes).
    this.notes = {};
    for (const name of ["reason", "correlationId", "onBehalfOf"]) {
      const value = options[name];
      if (value === undefined || value === null) continue;
      if (typeof value !== "string" || value === "") {
        throw new EvstateStateStoreError(
          `[EvstateStateStore] option ${name} must be a non-empty string`,
        );
      }
      this.notes[name] = value;
    }
    this.#endpoint = {
      url: this.url,
      token: checkToken(plain(options.token) ?? process.env.EVSTATE_TOKEN),
      timeoutMs: this.timeoutMs,
      attempts: this.attempts,
    };
    this.#lock = typeof options.lock === "object" && options.lock !== null ? options.lock : {};
    this.#envLock = lockTokenFromEnv();
  }

  async init() {
    await this.#call("init", []);
  }

  async deinit() {
    await this.#call("deinit", []);
  }

  list() {
    return this.#call("list", []);
  }

  count() {
    return this.#call("count", []);
  }

  listScopes() {
    return this.#call("listScopes", []);
  }

  /** The key's version: 0 without a state, 1 after its first set, and so on. */
  version(key) {
    return this.#call("version", [key]);
  }

  async get(key) {
    const tree = await this.#call("get", [key]);
    return tree === null || tree === undefined ? undefined : this.#state(tree);
  }

  async getBatch(ids) {
    if (ids.length === 0) return {};
    return this.#states(await this.#call("getBatch", [Array.from(ids)]));
  }

  async all() {
    return this.#states(await this.#call("all", []));
  }

  async set(key, value, options = {}) {
    await this.#call("set", [key, await serialize(this.scope, value), writeOptions(options)]);
  }

  async delete(key, options = {}) {
    await this.#call("delete", [key, writeOptions(options)]);
  }

  async #state(tree) {
    const state = await deserialize(this.scope, tree);
    // As Alchemy's own FileSystemStateStore: a state read back belongs to this scope.
    state.output ??= {};
    state.output[ResourceScope] = this.scope;
    return state;
  }

  async #states(trees) {
    const entries = await Promise.all(
      Object.entries(trees).map(async ([id, tree]) => [id, await this.#state(tree)]),
    );
    return Object.fromEntries(entries);
  }

  // The token this store's writes carry: evstate run's (EVSTATE_LOCK_TOKEN) where its
  // scope covers this one, else, with `lock`, the stage's shared lease, taken at the
  // first call. A one-name scope (the app's own) is in no stage's lease: no token.
  async #lockToken() {
    const path = this.scope.chain.join("/");
    const env = this.#envLock;
    if (env !== undefined && (env.scope === undefined || covers(env.scope, path))) {
      return env.token;
    }
    if (!this.lock || this.scope.chain.length < 2) return undefined;
    const lease = leaseFor(this.#endpoint, stageOf(this.scope.chain), this.#lock);
    return await lease.token();
  }

  async #call(method, params) {
    const context = { chain: this.scope.chain, ...this.notes };
    if (this.consistency) context.consistency = this.consistency;
    const lockToken = await this.#lockToken();
    if (lockToken !== undefined) context.lockToken = lockToken;
    return request(this.#endpoint, method, params, context);
  }
}

function covers(scope, path) {
  return path === scope || path.startsWith(`${scope}/`);
}

// The options object of a set or delete: a fresh idempotency key unless the caller gave
// one, and expectedVersion when given.
function writeOptions({ expectedVersion, idempotencyKey } = {}) {
  const options = { idempotencyKey: idempotencyKey ?? randomUUID() };
  if (expectedVersion !== undefined) options.expectedVersion = expectedVersion;
  return options;
}
