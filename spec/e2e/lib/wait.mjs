// Polling helpers for e2e tests: wait for a condition, never for a time.
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Resolves with fn()'s first truthy value, or its last value after ms.
export async function waitFor(fn, ms, step = 25) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) return v;
    await sleep(step);
  }
}

// As waitFor, but throws "timed out waiting for <what>" instead of
// answering the last falsy value.
export async function until(fn, what, ms = 10000) {
  const v = await waitFor(fn, ms, 50);
  if (!v) throw new Error(`timed out waiting for ${what}`);
  return v;
}
