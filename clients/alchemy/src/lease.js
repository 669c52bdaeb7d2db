// `lock: true`: one lease per app/stage and server in this process, shared by every
// EvstateStateStore of that stage (Alchemy makes one per scope, nested ones included).
//
// The lease is taken at the first call, renewed every ttl/3 by an unref'd timer (it never
// keeps the process alive) and released when the process ends: on beforeExit, on SIGINT
// and SIGTERM (then the signal is raised again, for Alchemy's own handler or the default),
// and, when the process leaves through process.exit() (Alchemy does after a destroy), by
// a short synchronous child process from the exit handler. All best effort: a holder that
// is killed outright leaves a lease that lapses `ttl` seconds after its last renewal.
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import os from "node:os";
import path from "node:path";
import { EvstateStateStoreError, request } from "./request.js";

const DEFAULT_TTL_S = 30;
const RELEASE_TIMEOUT_MS = 3_000;
const SIGNALS = ["SIGINT", "SIGTERM"];

const leases = new Map(); // "<url> <app/stage>" -> StageLease, taken or being taken
const held = new Set(); // StageLeases taken and not yet released

/** The stage a chain belongs to: its first two names. */
export function stageOf(chain) {
  return chain.slice(0, 2);
}

/**
 * The lease `evstate run --lock SCOPE -- CMD` holds for this process: `{token, scope}`
 * from EVSTATE_LOCK_TOKEN and EVSTATE_LOCK_SCOPE, or undefined when it is not set.
 *
 * @throws {EvstateStateStoreError} EVSTATE_LOCK_TOKEN is not a decimal int
 */
export function lockTokenFromEnv(env = process.env) {
  const text = env.EVSTATE_LOCK_TOKEN;
  if (text === undefined || text === "") return undefined;
  const token = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(token)) {
    throw new EvstateStateStoreError(
      "[EvstateStateStore] EVSTATE_LOCK_TOKEN must be a lease's token, a decimal int " +
        `(evstate run --lock sets it), got ${JSON.stringify(text.slice(0, 40))}`,
    );
  }
  return { token, scope: env.EVSTATE_LOCK_SCOPE || undefined };
}

/** The lease of `stage` (a chain of two names) at this endpoint, made at the first ask. */
export function leaseFor(endpoint, stage, options) {
  const id = `${endpoint.url} ${stage.join("/")}`;
  let lease = leases.get(id);
  if (lease === undefined) {
    lease = new StageLease(endpoint, stage, options, () => leases.delete(id));
    leases.set(id, lease);
  }
  return lease;
}

// Who holds the lease, as others will see it in a refusal and in `evstate lock list`.
// The command is the script's name only: its arguments may hold secrets.
function describeProcess() {
  let user = process.env.USER ?? process.env.USERNAME ?? "unknown";
  try {
    user = os.userInfo().username;
  } catch {
    // no passwd entry (a container): keep the environment's name
  }
  const script = process.argv[1] ? path.basename(process.argv[1]) : "";
  return {
    holder: `${user}@${os.hostname()}`,
    pid: process.pid,
    command: `${path.basename(process.argv0 || "node")} ${script}`.trim(),
  };
}

function heldError(stage, error) {
  const { holder, info = {}, token, expiresAt, scope } = error.details ?? {};
  const who = typeof info.holder === "string" ? info.holder : holder;
  const about = Object.entries(info)
    .filter(([key]) => key !== "holder" && key !== "request")
    .map(([key, value]) => `${key} ${typeof value === "string" ? value : JSON.stringify(value)}`);
  const via = who !== holder ? ` through evstate serve (${holder})` : "";
  const until = Number.isFinite(expiresAt) ? new Date(expiresAt).toISOString() : "?";
  const where = scope && scope !== stage.join("/") ? ` (its lease is on ${scope})` : "";
  return new EvstateStateStoreError(
    `[EvstateStateStore] ${stage.join("/")} is locked by ${who}` +
      `${about.length ? ` (${about.join(", ")})` : ""}${via}${where}, lease token ${token}, ` +
      `until ${until} unless renewed; nothing was written. Try again once it is released, ` +
      `or break it: evstate lock break ${scope ?? stage.join("/")} ${token}`,
    { method: "lock", status: error.status, code: error.code, details: error.details, cause: error },
  );
}

class StageLease {
  #endpoint;
  #stage;
  #ttl;
  #info;
  #forget;
  #taking;
  #lease;
  #timer;
  #failing = false;
  #released = false;

  constructor(endpoint, stage, { ttl = DEFAULT_TTL_S, info = {} } = {}, forget) {
    this.#endpoint = endpoint;
    this.#stage = stage;
    this.#ttl = ttl;
    this.#info = info;
    this.#forget = forget;
  }

  /**
   * The lease's token, taken at the first ask. A lock held by someone else fails every
   * call from then on; any other failure (no server) only the calls waiting for it.
   */
  token() {
    this.#taking ??= this.#take().catch((error) => {
      if (error?.code !== "lockHeld") this.#taking = undefined;
      throw error;
    });
    return this.#taking;
  }

  async #take() {
    const nonce = randomUUID();
    const info = { ...describeProcess(), ...this.#info, request: nonce };
    try {
      this.#lease = await request(this.#endpoint, "lock", [{ ttl: this.#ttl, info }], {
        chain: this.#stage,
      });
    } catch (error) {
      if (error?.code !== "lockHeld") throw error;
      // Held by our own request: its answer was lost (a 503, a timeout) and the retry
      // found the lease it had taken.
      if (error.details?.info?.request !== nonce) throw heldError(this.#stage, error);
      this.#lease = error.details;
    }
    track(this);
    this.#timer = setInterval(() => void this.#renew(), (this.#ttl * 1000) / 3);
    this.#timer.unref();
    return this.#lease.token;
  }

  async #renew() {
    if (this.#released) return;
    const period = (this.#ttl * 1000) / 3;
    const endpoint = {
      ...this.#endpoint,
      attempts: 1, // the next tick tries again, well within the ttl
      timeoutMs: Math.min(this.#endpoint.timeoutMs, period),
    };
    const stage = this.#stage.join("/");
    try {
      this.#lease = await request(endpoint, "renew", [this.#lease.token, { ttl: this.#ttl }], {
        chain: this.#stage,
      });
      this.#failing = false;
    } catch (error) {
      if (this.#released) return;
      if (error?.status === 409) {
        // Broken or taken over: this process's writes will be refused (409, fenced).
        clearInterval(this.#timer);
        console.warn(`[EvstateStateStore] lost the lock on ${stage}: ${error.message}`);
      } else if (!this.#failing) {
        this.#failing = true; // said once, until a renewal succeeds again
        console.warn(
          `[EvstateStateStore] could not renew the lock on ${stage} (trying again every ` +
            `${Math.round(period)}ms; it lapses ${this.#ttl}s after the last renewal): ${error?.message}`,
        );
      }
    }
  }

  /** Release the lease (once); failures are ignored: it lapses after its ttl anyway. */
  async release() {
    if (this.#released) return;
    this.#released = true;
    clearInterval(this.#timer);
    this.#forget();
    const endpoint = { ...this.#endpoint, attempts: 1, timeoutMs: RELEASE_TIMEOUT_MS };
    try {
      await request(endpoint, "unlock", [this.#lease.token], { chain: this.#stage });
    } catch {
      // released already, broken, or the server is gone: nothing more to do
    }
    untrack(this);
  }

  /** What a child process needs to release it, for the exit handler. */
  releaseRequest() {
    const { url, token } = this.#endpoint;
    return { url, bearer: token, chain: this.#stage, token: this.#lease.token };
  }
}

function track(lease) {
  if (held.size === 0) {
    process.on("beforeExit", releaseAll);
    process.on("exit", releaseAllSync);
    for (const signal of SIGNALS) process.on(signal, onSignal);
  }
  held.add(lease);
}

function untrack(lease) {
  held.delete(lease);
  if (held.size === 0) unhook();
}

function unhook() {
  process.removeListener("beforeExit", releaseAll);
  process.removeListener("exit", releaseAllSync);
  for (const signal of SIGNALS) process.removeListener(signal, onSignal);
}

async function releaseAll() {
  await Promise.allSettled([...held].map((lease) => lease.release()));
}

// While this listener is there, signal-exit (Alchemy's exit handling) leaves the signal
// alone (a second Ctrl-C too); once the leases are released, the listener is gone and the
// signal is raised again, for the other listeners or the default action.
let signalled = false;
async function onSignal(signal) {
  if (signalled) return;
  signalled = true;
  await releaseAll();
  unhook();
  process.kill(process.pid, signal);
}

// process.exit() runs no more callbacks: a child process sends the unlocks, synchronously.
const RELEASE_SCRIPT = `
const requests = JSON.parse(process.env.EVSTATE_RELEASE);
Promise.allSettled(requests.map(({ url, bearer, chain, token }) => fetch(url, {
  method: "POST",
  headers: { Authorization: "Bearer " + bearer, "Content-Type": "application/json" },
  body: JSON.stringify({ method: "unlock", params: [token], context: { chain } }),
  signal: AbortSignal.timeout(${RELEASE_TIMEOUT_MS}),
})));
`;

function releaseAllSync() {
  if (held.size === 0) return;
  const requests = [...held].map((lease) => lease.releaseRequest());
  held.clear();
  try {
    spawnSync(process.execPath, ["-e", RELEASE_SCRIPT], {
      env: { PATH: process.env.PATH ?? "", EVSTATE_RELEASE: JSON.stringify(requests) },
      stdio: "ignore",
      timeout: RELEASE_TIMEOUT_MS + 2_000,
    });
  } catch {
    // best effort: the lease lapses after its ttl
  }
}
