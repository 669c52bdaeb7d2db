// A tiny real Alchemy app: File resources (one with a secret in props, one in a nested
// scope, one whose id has a "/"), written to <root>/.alchemy by Alchemy's
// FileSystemStateStore. Usage: node alchemy_app.mjs <rootDir> <password>
import alchemy from "alchemy";
import { File } from "alchemy/fs";

const [rootDir, password] = process.argv.slice(2);
process.chdir(rootDir);

const app = await alchemy("interop-app", {
  stage: "dev",
  phase: "up",
  password,
  rootDir,
  quiet: true,
});

await File("config", {
  path: "out/config.txt",
  content: "hello from alchemy",
  token: alchemy.secret("s3cr3t-token ☃"),
  apiKey: alchemy.secret({ user: "bob", scopes: ["read", "write"] }),
  created: new Date("2024-05-06T07:08:09.123Z"),
});
await File("logs/app.log", { path: "out/logs/app.log", content: "line 1\n" });
await alchemy.run("nested", async () => {
  await File("inner", { path: "out/inner.txt", content: "inside a nested scope" });
});

await app.finalize();
