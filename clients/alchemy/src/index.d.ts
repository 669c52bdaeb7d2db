import type { Scope, Secret, State, StateStore } from "alchemy";

/** Options of {@link EvstateStateStore}. */
export interface EvstateStateStoreOptions {
  /** Where `evstate serve` listens. Default: `$EVSTATE_URL`, else `http://127.0.0.1:8787`. */
  url?: string;
  /** The bearer token `evstate serve` was started with. Default: `$EVSTATE_TOKEN`. */
  token?: string | Secret<string>;
  /** Milliseconds one request may take before it fails. Default: 30000. */
  timeoutMs?: number;
  /**
   * Tries per call when the server cannot be reached, does not answer within `timeoutMs`,
   * or answers 503 (Kafka not reachable yet, a write not acknowledged). Sets and deletes
   * carry an idempotency key, so a retry never writes twice. Default: 5.
   */
  attempts?: number;
  /**
   * Reads wait for: `session` (the server's own writes, the default), `strong` (everything
   * committed to Kafka when the read arrives) or `eventual` (no wait).
   */
  consistency?: "session" | "strong" | "eventual";
  /**
   * Take the stage's lock: at the first call, a lease on the app/stage (the first two
   * names of the scope's chain), shared by every store of that stage in the process,
   * renewed every `ttl / 3` seconds and released when the process ends. Every request
   * carries its token; a lock someone else holds fails the first call at once, with an
   * {@link EvstateStateStoreError} that names the holder. Under `evstate run --lock`
   * (`EVSTATE_LOCK_TOKEN` set) its token is used instead, with or without this option.
   * Default: false.
   */
  lock?: boolean | EvstateLockOptions;
  /** Why (a deploy's title, a ticket): recorded as the `reason` of every event written. */
  reason?: string;
  /** Ties the events to a run (a CI job id): recorded as their `correlation_id`. */
  correlationId?: string;
  /**
   * The end user this app acts for, recorded as the events' `on_behalf_of`. The events'
   * actor is always the principal `evstate serve` authenticated by the token.
   */
  onBehalfOf?: string;
}

/** `lock: { ... }`: the lease's settings. */
export interface EvstateLockOptions {
  /** Seconds the lease lasts without a renewal (0.5 to 86400). Default: 30. */
  ttl?: number;
  /**
   * What others see of the holder, beside `holder` (user@host), `pid` and `command`,
   * which the store fills in: a CI job's URL, a ticket.
   */
  info?: Record<string, unknown>;
}

/** Options of a single {@link EvstateStateStore.set} or {@link EvstateStateStore.delete}. */
export interface EvstateWriteOptions {
  /**
   * Compare-and-set: write only if the key is at this version now (0: it has no state);
   * otherwise the call fails with status 409 and `code` `"conflict"`.
   */
  expectedVersion?: number;
  /**
   * Makes retries safe: a write with a key the server has seen answers as the first one
   * did and writes nothing. Default: a fresh uuid per call (the same in its own retries).
   */
  idempotencyKey?: string;
}

/** A lease as `evstate serve` describes it (times in epoch milliseconds). */
export interface EvstateLease {
  scope: string;
  holder: string;
  info: Record<string, unknown>;
  token: number;
  acquiredAt?: number;
  expiresAt: number;
}

/** What `evstate serve` answered when it refused, or why it could not be reached. */
export declare class EvstateStateStoreError extends Error {
  /** The state store method that failed (`get`, `set`, ...). */
  readonly method: string | undefined;
  /** The HTTP status, when the server answered. */
  readonly status: number | undefined;
  /**
   * What a 409 was: `lockHeld` (someone else holds the stage's lock), `fenced` (this
   * process's lease was broken or taken over), `noSuchLease`, or `conflict` (a
   * compare-and-set found another version).
   */
  readonly code: "lockHeld" | "fenced" | "noSuchLease" | "conflict" | undefined;
  /**
   * The refusal's data: for `lockHeld` the lease ({@link EvstateLease}: `holder`, `info`,
   * `token`, `expiresAt`, `scope`), for `conflict` `key`, `expected` and `actual`.
   */
  readonly details: (Partial<EvstateLease> & Record<string, unknown>) | undefined;
}

/**
 * Alchemy's `StateStore`, kept in evstate (Apache Kafka and a RocksDB view) through
 * `evstate serve`. States are serialized with Alchemy's serde before they leave the
 * process, so secrets travel and rest encrypted with the app's password.
 *
 * @example
 * const app = await alchemy("my-app", {
 *   stateStore: (scope) => new EvstateStateStore(scope, { url, token, lock: true }),
 * });
 */
export declare class EvstateStateStore implements StateStore {
  constructor(scope: Scope, options?: EvstateStateStoreOptions);
  readonly scope: Scope;
  readonly url: string;
  readonly timeoutMs: number;
  readonly attempts: number;
  readonly consistency: EvstateStateStoreOptions["consistency"];
  /** Whether this store takes the stage's lock (the `lock` option). */
  readonly lock: boolean;
  /** Create the topics evstate needs (idempotent). */
  init(): Promise<void>;
  /** Delete every state of this scope (the history keeps them). */
  deinit(): Promise<void>;
  list(): Promise<string[]>;
  count(): Promise<number>;
  /** Names of the nested scopes directly below this one that hold states. */
  listScopes(): Promise<string[]>;
  /** The key's version: 0 without a state, 1 after its first set, and so on. */
  version(key: string): Promise<number>;
  get(key: string): Promise<State | undefined>;
  getBatch(ids: string[]): Promise<Record<string, State>>;
  all(): Promise<Record<string, State>>;
  set(key: string, value: State, options?: EvstateWriteOptions): Promise<void>;
  delete(key: string, options?: EvstateWriteOptions): Promise<void>;
}
