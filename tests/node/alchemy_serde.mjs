// Alchemy's own serde, for evstate's interop tests.
//
// stdin: {"password": str, "op": "serialize"} -> prints Alchemy's serialize() of a fixed
//   set of values (secrets of every shape, dates, buffers, the scope, symbol keys).
// stdin: {"password": str, "op": "deserialize", "tree": ...} -> deserializes `tree` with
//   Alchemy and prints it described in plain JSON: a Secret as {"$secret": value}, a Date
//   as {"$date": iso}, a Buffer as {"$buffer": base64}, the scope as {"$scope": true},
//   symbol keys as "Symbol(name)".
import { deserialize, isScope, isSecret, secret, serialize } from "alchemy";

const input = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));

// serde only reads `password` (and `eraseSecrets`) from the scope it is handed; a plain
// object flagged as a scope keeps the test free of Alchemy's app setup.
const scope = { password: input.password, [Symbol.for("alchemy::Scope")]: true };

function describe(value) {
  if (isSecret(value)) return { $secret: value.unencrypted };
  if (value instanceof Date) return { $date: value.toISOString() };
  if (Buffer.isBuffer(value)) return { $buffer: value.toString("base64") };
  if (value === scope || isScope(value)) return { $scope: true };
  if (Array.isArray(value)) return value.map(describe);
  if (value && typeof value === "object") {
    const out = {};
    for (const key of Reflect.ownKeys(value)) out[key.toString()] = describe(value[key]);
    return out;
  }
  return value;
}

if (input.op === "serialize") {
  const value = {
    plain: "text",
    empty: secret(""),
    space: secret("   "),
    unicode: secret("pässwörd ☃ 🔑"),
    newline: secret("line 1\nline 2\r\n"),
    long: secret("x".repeat(1000)),
    object: secret({ user: "bob", scopes: ["read", "write"], n: 1.5, ok: true }),
    number: secret(42),
    nested: { list: [secret("in a list"), { deeper: secret("in a dict") }] },
    when: new Date("2024-05-06T07:08:09.123Z"),
    raw: Buffer.from([0, 1, 2, 255]),
    scope,
    [Symbol.for("alchemy::ResourceID")]: "id-1",
  };
  process.stdout.write(JSON.stringify(await serialize(scope, value)));
} else if (input.op === "deserialize") {
  process.stdout.write(JSON.stringify(describe(await deserialize(scope, input.tree))));
} else {
  throw new Error(`unknown op ${input.op}`);
}
