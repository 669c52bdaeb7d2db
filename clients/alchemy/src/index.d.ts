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
   * Tries per call when the server cannot be reached or answers 503 (Kafka not
   * reachable yet, a write not acknowledged). Default: 5.
   */
  attempts?: number;
  /**
   * Reads wait for: `session` (the server's own writes, the default), `strong` (everything
   * committed to Kafka when the read arrives) or `eventual` (no wait).
   */
  consistency?: "session" | "strong" | "eventual";
}

/** What `evstate serve` answered when it refused, or why it could not be reached. */
export declare class EvstateStateStoreError extends Error {
  /** The state store method that failed (`get`, `set`, ...). */
  readonly method: string | undefined;
  /** The HTTP status, when the server answered. */
  readonly status: number | undefined;
}

/**
 * Alchemy's `StateStore`, kept in evstate (Apache Kafka and a RocksDB view) through
 * `evstate serve`. States are serialized with Alchemy's serde before they leave the
 * process, so secrets travel and rest encrypted with the app's password.
 *
 * @example
 * const app = await alchemy("my-app", {
 *   stateStore: (scope) => new EvstateStateStore(scope, { url, token }),
 * });
 */
export declare class EvstateStateStore implements StateStore {
  constructor(scope: Scope, options?: EvstateStateStoreOptions);
  readonly scope: Scope;
  readonly url: string;
  readonly timeoutMs: number;
  readonly attempts: number;
  readonly consistency: EvstateStateStoreOptions["consistency"];
  /** Create the topics evstate needs (idempotent). */
  init(): Promise<void>;
  /** Delete every state of this scope (the history keeps them). */
  deinit(): Promise<void>;
  list(): Promise<string[]>;
  count(): Promise<number>;
  /** Names of the nested scopes directly below this one that hold states. */
  listScopes(): Promise<string[]>;
  get(key: string): Promise<State | undefined>;
  getBatch(ids: string[]): Promise<Record<string, State>>;
  all(): Promise<Record<string, State>>;
  set(key: string, value: State): Promise<void>;
  delete(key: string): Promise<void>;
}
