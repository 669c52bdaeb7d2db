// Read every state of one scope with Alchemy's own FileSystemStateStore and print them
// described in plain JSON ({"$secret": value}, {"$date": iso}, {"$scope": true}, ...).
// Usage: node alchemy_read_state.mjs <stateRoot> <password> <app> <stage> [nested...]
import { isScope, isSecret } from "alchemy";
import { FileSystemStateStore } from "alchemy/state";

const [rootDir, password, ...chain] = process.argv.slice(2);
const scope = { chain, password, [Symbol.for("alchemy::Scope")]: true };

function describe(value) {
  if (isSecret(value)) return { $secret: value.unencrypted };
  if (value instanceof Date) return { $date: value.toISOString() };
  if (Buffer.isBuffer(value)) return { $buffer: value.toString("base64") };
  if (isScope(value)) return { $scope: true };
  if (Array.isArray(value)) return value.map(describe);
  if (value && typeof value === "object") {
    const out = {};
    for (const key of Reflect.ownKeys(value)) out[key.toString()] = describe(value[key]);
    return out;
  }
  return value;
}

const store = new FileSystemStateStore(scope, { rootDir });
process.stdout.write(JSON.stringify(describe(await store.all())));
