// EvstateStateStore: Alchemy's StateStore over `evstate serve`.
//
// Each call is one `POST <url>` with {"method", "params", "context": {"chain"}}, the
// protocol of Alchemy's own remote state service. States are serialized here, with
// Alchemy's serde (secrets encrypted with the app's password), and the server stores
// them as they are; what it answers is deserialized here again. The server never sees
// a plaintext secret or the password.
import { deserialize, ResourceScope, serialize } from "alchemy";

const DEFAULT_URL = "http://127.0.0.1:8787";
const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_ATTEMPTS = 5;
const MAX_DELAY_MS = 5_000;

/** An error answered by `evstate serve`, or no answer at all; `message` says which. */
export class EvstateStateStoreError extends Error {
  constructor(message, { method, status, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "EvstateStateStoreError";
    this.method = method;
    this.status = status;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function plain(token) {
  if (token === undefined || token === null || typeof token === "string") return token;
  return token.unencrypted; // an alchemy.secret(...)
}

// What may follow "Bearer " in a header (RFC 6750's b64token, plus a few printable ASCII
// characters tokens are made of). Checked once, here: fetch would otherwise refuse the
// header on every call with an error that quotes it, token and all.
const TOKEN_SYNTAX = /^[A-Za-z0-9\-._~+/=!#$%&'*^`|]+$/;

function checkToken(token) {
  if (!token) {
    throw new EvstateStateStoreError(
      "[EvstateStateStore] missing token: pass { token } or set EVSTATE_TOKEN " +
        "(the token `evstate serve` was started with)",
    );
  }
  if (typeof token !== "string" || !TOKEN_SYNTAX.test(token)) {
    // Never quote the token: it is a credential, and this message may be logged.
    const what = typeof token !== "string" ? `a ${typeof token}` : "a string with whitespace, control or non-ASCII characters";
    throw new EvstateStateStoreError(
      `[EvstateStateStore] invalid token: it is ${what}; a bearer token is printable ASCII ` +
        "without spaces (check for a trailing newline in EVSTATE_TOKEN)",
    );
  }
  return token;
}

// An error's text with the token cut out, should a lower layer have quoted it.
function redact(text, token) {
  return token ? String(text).split(token).join("****") : String(text);
}

function retryAfterMs(response, fallback) {
  const seconds = Number(response.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_DELAY_MS) : fallback;
}

/**
 * Alchemy's `StateStore`, kept in evstate:
 * `stateStore: (scope) => new EvstateStateStore(scope, { url, token })`.
 */
export class EvstateStateStore {
  #token;

  constructor(scope, options = {}) {
    this.scope = scope;
    this.url = new URL(options.url ?? process.env.EVSTATE_URL ?? DEFAULT_URL).href;
    this.#token = checkToken(plain(options.token) ?? process.env.EVSTATE_TOKEN);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.attempts = Math.max(1, options.attempts ?? DEFAULT_ATTEMPTS);
    this.consistency = options.consistency;
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

  async set(key, value) {
    await this.#call("set", [key, await serialize(this.scope, value)]);
  }

  async delete(key) {
    await this.#call("delete", [key]);
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

  // One request; refused connections and 503s (Kafka not reachable yet, a write not
  // acknowledged) are tried again with backoff. Every method is safe to repeat.
  async #call(method, params) {
    const context = { chain: this.scope.chain };
    if (this.consistency) context.consistency = this.consistency;
    const body = JSON.stringify({ method, params, context });
    let delay = 250;
    for (let attempt = 1; ; attempt++) {
      const last = attempt >= this.attempts;
      let response;
      let answer;
      try {
        response = await fetch(this.url, {
          method: "POST",
          headers: {
            Authorization: `Bearer ${this.#token}`,
            "Content-Type": "application/json",
            Accept: "application/json",
          },
          body,
          signal: AbortSignal.timeout(this.timeoutMs),
        });
        answer = await response.text();
      } catch (error) {
        if (error?.name === "TimeoutError" || error?.name === "AbortError") {
          throw new EvstateStateStoreError(
            `[EvstateStateStore] "${method}": no answer from ${this.url} within ${this.timeoutMs}ms`,
            { method, cause: error },
          );
        }
        // Only a failed connection is worth another try; anything else (a request
        // fetch refuses to build) fails the same way every time.
        if (!last && error?.message === "fetch failed") {
          await sleep(delay);
          delay = Math.min(delay * 2, MAX_DELAY_MS);
          continue;
        }
        const reason = redact(error?.cause?.message ?? error?.message ?? error, this.#token);
        throw new EvstateStateStoreError(
          `[EvstateStateStore] "${method}": cannot reach evstate serve at ${this.url}: ${reason}`,
          { method, cause: error },
        );
      }
      let json;
      try {
        json = JSON.parse(answer);
      } catch {
        throw new EvstateStateStoreError(
          `[EvstateStateStore] "${method}" failed with status ${response.status}: expected ` +
            `JSON, got ${response.headers.get("Content-Type")}: ${answer.slice(0, 200)}`,
          { method, status: response.status },
        );
      }
      if (json?.success === true) return json.result;
      if (response.status === 503 && !last) {
        await sleep(retryAfterMs(response, delay));
        delay = Math.min(delay * 2, MAX_DELAY_MS);
        continue;
      }
      throw new EvstateStateStoreError(
        `[EvstateStateStore] "${method}" failed with status ${response.status}: ` +
          `${json?.error ?? answer.slice(0, 200)}`,
        { method, status: response.status },
      );
    }
  }
}
