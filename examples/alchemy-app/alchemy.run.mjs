// An ordinary Alchemy app whose state lives in evstate, through `evstate serve`.
//
//   node alchemy.run.mjs              deploy (creates the files under out/)
//   GREETING=hi node alchemy.run.mjs  change a prop (Alchemy updates the files)
//   node alchemy.run.mjs --destroy    destroy (removes them, empties the state)
//
// EVSTATE_URL and EVSTATE_TOKEN say where `evstate serve` listens; ALCHEMY_PASSWORD
// encrypts the secret below before it leaves this process. `lock: true` holds the
// stage's lock while the app runs: a second deploy of the same stage meanwhile fails at
// once, naming this one.
import alchemy from "alchemy";
import { File } from "alchemy/fs";
import { EvstateStateStore } from "@evstate/alchemy";

const app = await alchemy("evstate-example", {
  stateStore: (scope) => new EvstateStateStore(scope, { lock: true }),
});

const greeting = process.env.GREETING ?? "hello";

await File("index.html", {
  path: "out/index.html",
  content: `<h1>${greeting}, world</h1>\n`,
});

await File("config", {
  path: "out/config.json",
  content: `${JSON.stringify({ greeting }, null, 2)}\n`,
  apiKey: alchemy.secret(process.env.API_KEY ?? "dev-api-key"),
});

// A nested scope: Alchemy gives it a state store of its own, and deinits it on destroy.
await alchemy.run("docs", async () => {
  await File("guides/start", {
    path: "out/docs/start.md",
    content: `# ${greeting}\n\nStart here.\n`,
  });
});

await app.finalize();
