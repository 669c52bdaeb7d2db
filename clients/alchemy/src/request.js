// One call to `evstate serve`: POST {"method", "params", "context"}, retried when it may
// succeed if tried again, and the answer's error turned into an EvstateStateStoreError.

const MAX_DELAY_MS = 5_000;

/** An error answered by `evstate serve`, or no answer at all; `message` says which. */
export class EvstateStateStoreError extends Error {
  constructor(message, { method, status, code, details, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "EvstateStateStoreError";
    this.method = method;
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function plain(token) {
  if (token === undefined || token === null || typeof token === "string") return token;
  return token.unencrypted; // an alchemy.secret(...)
}

// What may follow "Bearer " in a header (RFC 6750's b64token, plus a few printable ASCII
// characters tokens are made of). Checked once, at construction: fetch would otherwise
// refuse the header on every call with an error that quotes it, token and all.
const TOKEN_SYNTAX = /^[A-Za-z0-9\-._~+/=!#$%&'*^`|]+$/;

export function checkToken(token) {
  if (!token) {
    throw new EvstateStateStoreError(
      "[EvstateStateStore] missing token: pass { token } or set EVSTATE_TOKEN " +
        "(the token `evstate serve` was started with)",
    );
  }
  if (typeof token !== "string" || !TOKEN_SYNTAX.test(token)) {
    // Never quote the token: it is a credential, and this message may be logged.
    const what = typeof token !== "string" ? `a ${typeof token}` : "a string with whitespace, control or non-ASCII characters";
    throw new EvstateStateStoreError(
      `[EvstateStateStore] invalid token: it is ${what}; a bearer token is printable ASCII ` +
        "without spaces (check for a trailing newline in EVSTATE_TOKEN)",
    );
  }
  return token;
}

// An error's text with the token cut out, should a lower layer have quoted it.
function redact(text, token) {
  return token ? String(text).split(token).join("****") : String(text);
}

function retryAfterMs(response, fallback) {
  const seconds = Number(response.headers.get("Retry-After"));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_DELAY_MS) : fallback;
}

// What a refusal carries beside `error` (a 409's code, holder, token, ...).
function detailsOf(json) {
  if (json === null || typeof json !== "object") return undefined;
  const { success, status, error, ...details } = json;
  void [success, status, error];
  return Object.keys(details).length > 0 ? details : undefined;
}

/**
 * One request to `evstate serve`. Refused connections, 503s (Kafka not reachable yet, a
 * write not acknowledged) and requests with no answer within `timeoutMs` are tried again
 * with backoff, up to `attempts` tries: every method is safe to repeat (a set or delete
 * carries its idempotency key in `params`, the same in every try).
 *
 * @param {{url: string, token: string, timeoutMs: number, attempts: number}} endpoint
 * @returns the answer's `result`
 * @throws {EvstateStateStoreError} any other answer, or none after the last try
 */
export async function request(endpoint, method, params, context) {
  const { url, token, timeoutMs, attempts } = endpoint;
  const body = JSON.stringify({ method, params, context });
  let delay = 250;
  for (let attempt = 1; ; attempt++) {
    const last = attempt >= attempts;
    let response;
    let answer;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: {
          Authorization: `Bearer ${token}`,
          "Content-Type": "application/json",
          Accept: "application/json",
        },
        body,
        signal: AbortSignal.timeout(Math.ceil(timeoutMs)), // it takes integers only
      });
      answer = await response.text();
    } catch (error) {
      const timedOut = error?.name === "TimeoutError" || error?.name === "AbortError";
      // Only a failed connection or a timeout is worth another try; anything else (a
      // request fetch refuses to build) fails the same way every time.
      if (!last && (timedOut || error?.message === "fetch failed")) {
        await sleep(delay);
        delay = Math.min(delay * 2, MAX_DELAY_MS);
        continue;
      }
      const tries = attempt > 1 ? ` (${attempt} tries)` : "";
      if (timedOut) {
        throw new EvstateStateStoreError(
          `[EvstateStateStore] "${method}": no answer from ${url} within ${timeoutMs}ms${tries}`,
          { method, cause: error },
        );
      }
      const reason = redact(error?.cause?.message ?? error?.message ?? error, token);
      throw new EvstateStateStoreError(
        `[EvstateStateStore] "${method}": cannot reach evstate serve at ${url}: ${reason}${tries}`,
        { method, cause: error },
      );
    }
    let json;
    try {
      json = JSON.parse(answer);
    } catch {
      throw new EvstateStateStoreError(
        `[EvstateStateStore] "${method}" failed with status ${response.status}: expected ` +
          `JSON, got ${response.headers.get("Content-Type")}: ${answer.slice(0, 200)}`,
        { method, status: response.status },
      );
    }
    if (json?.success === true) return json.result;
    if (response.status === 503 && !last) {
      await sleep(retryAfterMs(response, delay));
      delay = Math.min(delay * 2, MAX_DELAY_MS);
      continue;
    }
    const details = detailsOf(json);
    throw new EvstateStateStoreError(
      `[EvstateStateStore] "${method}" failed with status ${response.status}: ` +
        `${json?.error ?? answer.slice(0, 200)}`,
      { method, status: response.status, code: details?.code, details },
    );
  }
}
