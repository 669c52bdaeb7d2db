// An Alchemy v2 app whose state lives in evstate, through `evstate serve`'s REST state
// routes. Nothing here needs a cloud account: `Alchemy.Random` mints a secret locally,
// and Alchemy keeps it in the state store (evstate seals it before it reaches Kafka).
//
//   npx alchemy deploy --stage dev --yes              deploy
//   GROUP=1 npx alchemy deploy --stage dev --yes      add a nested resource (Group/Nested)
//   npx alchemy state ls -r                           what the state store holds
//   npx alchemy destroy --stage dev --yes             destroy
//
// EVSTATE_STATE_URL is where `evstate serve` listens (under `evstate run --lock
// STACK/STAGE --state-url URL`, the URL it hands over carries the lease), EVSTATE_TOKEN
// the bearer token.
import * as Alchemy from "alchemy";
import { State, makeHttpStateStore } from "alchemy/State";
import * as Effect from "effect/Effect";
import * as Layer from "effect/Layer";

const state = Layer.effect(
  State,
  makeHttpStateStore({
    url: process.env.EVSTATE_STATE_URL ?? "http://127.0.0.1:8787",
    authToken: process.env.EVSTATE_TOKEN ?? "",
    id: "evstate",
  }).pipe(Effect.map(Effect.succeed)),
);

export default Alchemy.Stack(
  "evstate-v2-example",
  { providers: Alchemy.RandomProvider(), state },
  Effect.gen(function* () {
    yield* Alchemy.Random("Secret");
    if (process.env.GROUP) {
      yield* Alchemy.Random("Nested", { bytes: 16 }).pipe(Alchemy.push("Group"));
    }
    return { group: Boolean(process.env.GROUP) };
  }),
);
