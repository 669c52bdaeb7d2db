// An ordinary Alchemy app whose state store takes the stage's lock (`lock: true`), for
// tests/integration/test_alchemy_lock.py. Two File resources, with a pause between them
// so that another deploy of the same stage can try its luck meanwhile.
//
// Usage: node alchemy_locked_app.mjs --stage <stage> [--destroy]
// Environment: EVSTATE_URL, EVSTATE_TOKEN, ALCHEMY_PASSWORD, OUT (a directory),
// GREETING (what the files say), PAUSE_MS (the pause), LOCK ("0": no lock option).
// Prints "locked" on stderr once the first resource exists (the lease is held then).
import alchemy from "alchemy";
import { File } from "alchemy/fs";
import { EvstateStateStore } from "@evstate/alchemy";

const out = process.env.OUT ?? "out";
const greeting = process.env.GREETING ?? "hello";

const app = await alchemy("locked-app", {
  stateStore: (scope) => new EvstateStateStore(scope, { lock: process.env.LOCK !== "0" }),
  quiet: true,
});

await File("first", { path: `${out}/first.txt`, content: `${greeting} 1\n` });
process.stderr.write("locked\n");
await new Promise((resolve) => setTimeout(resolve, Number(process.env.PAUSE_MS ?? 0)));
await alchemy.run("nested", async () => {
  await File("second", { path: `${out}/second.txt`, content: `${greeting} 2\n` });
});

await app.finalize();
