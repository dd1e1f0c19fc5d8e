// The local Realtime endpoint's token verifier (auth.ts): what it keeps.

import assert from "node:assert/strict";
import { SignJWT } from "jose";
import { TOKEN_CACHE_CAPACITY, type TokenResult, TokenVerifier } from "./auth.ts";

const SECRET = "super-secret-jwt-token-with-at-least-32-characters-long";
const KEY = new TextEncoder().encode(SECRET);
const NOW = Math.floor(Date.now() / 1000);

function sign(claims: Record<string, unknown>): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: "HS256" }).sign(KEY);
}

let usersTokens: Promise<string[]> | undefined;
/** One more than the cache holds and one more again, each a user's, signed by jose (once for the file). */
function manyTokens(): Promise<string[]> {
  usersTokens ??= Promise.all(
    Array.from(
      { length: TOKEN_CACHE_CAPACITY + 2 },
      (_, i) => sign({ role: "authenticated", sub: `user-${i}`, exp: NOW + 3600 }),
    ),
  );
  return usersTokens;
}

/**
 * The claims of a token the verifier accepts. The verifier hands back the claims object it keeps for a
 * token, so the same object again means the token was looked up, another one that it was verified anew.
 */
function claimsOf(result: TokenResult): object {
  assert.ok(result.ok, JSON.stringify(result));
  return result.claims;
}

Deno.test("token verifier: the keys pinned at start stay however many other tokens come", async () => {
  const verifier = new TokenVerifier(SECRET);
  const anonKey = await sign({ role: "anon", iss: "supabase-demo", exp: NOW + 10 * 365 * 86400 });
  const pinned = claimsOf(await verifier.pin(anonKey));
  for (const token of await manyTokens()) claimsOf(await verifier.verify(token));
  assert.equal(
    claimsOf(await verifier.verify(anonKey)),
    pinned,
    `the anon key was verified again after ${TOKEN_CACHE_CAPACITY + 2} other tokens: it had left the cache`,
  );
});

Deno.test("token verifier: a full cache lets its least recently used token go, not all of them", async () => {
  const verifier = new TokenVerifier(SECRET);
  const tokens = await manyTokens();
  const first = claimsOf(await verifier.verify(tokens[0]));
  const second = claimsOf(await verifier.verify(tokens[1]));
  for (const token of tokens.slice(2, TOKEN_CACHE_CAPACITY)) claimsOf(await verifier.verify(token));
  // The cache is full; the first token is used again, the second is now the least recently used.
  assert.equal(claimsOf(await verifier.verify(tokens[0])), first, "the first token was not kept");
  for (const token of tokens.slice(TOKEN_CACHE_CAPACITY)) claimsOf(await verifier.verify(token));
  assert.equal(
    claimsOf(await verifier.verify(tokens[0])),
    first,
    "a token used just before the cache overflowed was verified again: the cache let it go",
  );
  assert.notEqual(
    claimsOf(await verifier.verify(tokens[1])),
    second,
    "the least recently used token was still kept past the cache's capacity",
  );
});
