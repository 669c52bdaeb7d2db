// Type-checked by `npm run check-types` (tsc --noEmit), never run: src/index.d.ts, used
// the way an Alchemy app and its code use it, against Alchemy's own types.
import type { Scope, State, StateStore } from "alchemy";
import alchemy from "alchemy";
import {
  type EvstateLease,
  type EvstateLockOptions,
  EvstateStateStore,
  EvstateStateStoreError,
  type EvstateStateStoreOptions,
  type EvstateWriteOptions,
} from "../src/index.js";

// The one line an app adds: a StateStore factory Alchemy accepts.
export const app = alchemy("my-app", {
  stateStore: (scope: Scope) => new EvstateStateStore(scope, { url: "http://127.0.0.1:8787" }),
});

export async function everyMethod(scope: Scope): Promise<void> {
  const options: EvstateStateStoreOptions = {
    url: "http://127.0.0.1:8787",
    token: alchemy.secret("t0ken"),
    timeoutMs: 1000,
    attempts: 2,
    consistency: "strong",
    lock: true,
  };
  const lock: EvstateLockOptions = { ttl: 60, info: { job: "https://ci.example/1" } };
  const locked = new EvstateStateStore(scope, { ...options, lock });
  const version: number = await locked.version("k");
  const cas: EvstateWriteOptions = { expectedVersion: version, idempotencyKey: "retry-1" };
  const takesLock: boolean = locked.lock;
  void takesLock;
  const store: StateStore = new EvstateStateStore(scope, options);
  const evstate = new EvstateStateStore(scope);
  await evstate.init();
  const ids: string[] = await store.list();
  const count: number = await store.count();
  const one: State | undefined = await store.get(ids[0] ?? "k");
  const some: Record<string, State> = await store.getBatch(ids);
  const all: Record<string, State> = await store.all();
  if (one !== undefined) await store.set(one.id, one);
  if (one !== undefined) await locked.set(one.id, one, cas);
  await store.delete("k");
  await locked.delete("k", { expectedVersion: 2 });
  const nested: string[] = await evstate.listScopes();
  await evstate.deinit();
  const settings: [string, number, number, EvstateStateStoreOptions["consistency"]] = [
    evstate.url,
    evstate.timeoutMs,
    evstate.attempts,
    evstate.consistency,
  ];
  void [count, some, all, nested, settings];
  try {
    await store.list();
  } catch (error) {
    if (error instanceof EvstateStateStoreError) {
      const status: number | undefined = error.status;
      const method: string | undefined = error.method;
      const message: string = error.message;
      if (error.code === "lockHeld" && error.details !== undefined) {
        const lease: Partial<EvstateLease> = error.details;
        const holder: string | undefined = lease.holder;
        const expiresAt: number | undefined = lease.expiresAt;
        void [holder, expiresAt];
      }
      void [status, method, message];
    }
  }
}
