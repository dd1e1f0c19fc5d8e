// The local Realtime endpoint's token verifier (auth.ts): what it keeps, and that it decides every token as
// it did with jose's jwtVerify, without waiting for WebCrypto.

import assert from "node:assert/strict";
import { base64url, decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify, SignJWT } from "jose";
import { type JwtClaims, TOKEN_CACHE_CAPACITY, type TokenResult, TokenVerifier } from "./auth.ts";

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

/**
 * How the verifier decided a token with jose's jwtVerify (its code before it computed the HMAC itself):
 * the reference the new verifier is held to.
 */
async function joseDecision(token: unknown, nowSeconds: number, secret = SECRET): Promise<TokenResult> {
  const failed = (code: string, kind: string, message: string) =>
    ({ ok: false, failure: { code, kind, message } }) as TokenResult;
  const malformed = () => failed("MalformedJWT", "malformed", "The token provided is not a valid JWT");
  const signature = () => failed("JwtSignatureError", "signature", "Failed to validate JWT signature");
  if (typeof token !== "string" || token.split(".").length !== 3) return malformed();
  let header: ReturnType<typeof decodeProtectedHeader>;
  let unverified: Record<string, unknown>;
  try {
    header = decodeProtectedHeader(token);
    unverified = decodeJwt(token) as Record<string, unknown>;
  } catch {
    return malformed();
  }
  if (!header.alg || !["HS256", "HS384", "HS512"].includes(header.alg)) return signature();
  try {
    await jwtVerify(token, new TextEncoder().encode(secret), {
      algorithms: ["HS256", "HS384", "HS512"],
      currentDate: new Date(nowSeconds * 1000),
    });
  } catch (error) {
    if (error instanceof joseErrors.JWSSignatureVerificationFailed) return signature();
    if (!(error instanceof joseErrors.JWTExpired)) return malformed();
  }
  if (typeof unverified.role !== "string" || typeof unverified.exp !== "number") {
    return failed("InvalidJWTToken", "missing_claims", "Fields `role` and `exp` are required in JWT");
  }
  const diff = (unverified.exp as number) - nowSeconds;
  if (diff <= 0) {
    return failed("InvalidJWTToken", "expired", `Token has expired ${Math.abs(diff)} seconds ago`);
  }
  return { ok: true, claims: unverified as JwtClaims };
}

const encodePart = (part: unknown) =>
  base64url.encode(part instanceof Uint8Array ? part : JSON.stringify(part));

/** HMAC of `input` with WebCrypto (not node:crypto, which the verifier uses). */
async function hmac(alg: string, input: string, key = KEY): Promise<string> {
  const hash = { HS256: "SHA-256", HS384: "SHA-384", HS512: "SHA-512" }[alg] ?? "SHA-256";
  const cryptoKey = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash }, false, ["sign"]);
  return base64url.encode(
    new Uint8Array(await crypto.subtle.sign("HMAC", cryptoKey, new TextEncoder().encode(input))),
  );
}

/** A token from its header and payload (objects, or raw bytes), signed as `signature` says. */
async function token(
  header: unknown,
  payload: unknown,
  signature: "good" | "wrong secret" | "empty secret" | ((good: string) => string) = "good",
): Promise<string> {
  const input = `${encodePart(header)}.${encodePart(payload)}`;
  const alg = (header as { alg?: string } | null)?.alg ?? "HS256";
  if (signature === "wrong secret") {
    return `${input}.${await hmac(alg, input, new TextEncoder().encode("another secret"))}`;
  }
  if (signature === "empty secret") {
    // WebCrypto refuses an empty HMAC key; HMAC pads a key shorter than the hash's block (64 bytes for
    // SHA-256) with zeros, so 64 zero bytes sign as the empty key does.
    return `${input}.${await hmac(alg, input, new Uint8Array(64))}`;
  }
  const good = await hmac(alg, input);
  return `${input}.${signature === "good" ? good : signature(good)}`;
}

Deno.test("token verifier: decides every token as with jose's jwtVerify, and waits for no WebCrypto", async () => {
  const user = { role: "authenticated", sub: "u1", exp: NOW + 600 };
  const hs256 = { alg: "HS256", typ: "JWT" };
  const b64False = { alg: "HS256", b64: false, crit: ["b64"] };
  const raw = (json: string) => new TextEncoder().encode(json);
  // The last base64url character of an HS256 signature (32 bytes) carries 2 unused bits: one set.
  const trailingBitSet = (good: string) => {
    const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    return `${good.slice(0, -1)}${alphabet[alphabet.indexOf(good.at(-1)!) ^ 1]}`;
  };
  /** [name, token, the verifier's secret when not SECRET] */
  const cases: [string, unknown, string?][] = [
    ["HS256", await token(hs256, user)],
    ["HS384", await token({ alg: "HS384" }, user)],
    ["HS512", await token({ alg: "HS512" }, user)],
    ["expired", await token(hs256, { ...user, exp: NOW - 30 })],
    ["exp is now", await token(hs256, { ...user, exp: NOW })],
    ["expired, bad signature", await token(hs256, { ...user, exp: NOW - 30 }, "wrong secret")],
    ["no role", await token(hs256, { exp: NOW + 600 })],
    ["no exp", await token(hs256, { role: "anon" })],
    ["role not a string", await token(hs256, { ...user, role: 1 })],
    ["exp a string", await token(hs256, { ...user, exp: String(NOW + 600) })],
    ["iat a string", await token(hs256, { ...user, iat: "yesterday" })],
    ["iat in the future", await token(hs256, { ...user, iat: NOW + 300 })],
    ["nbf in the future", await token(hs256, { ...user, nbf: NOW + 60 })],
    ["nbf now", await token(hs256, { ...user, nbf: NOW })],
    ["nbf a string", await token(hs256, { ...user, nbf: "now" })],
    ["nbf in the future, expired", await token(hs256, { ...user, nbf: NOW + 60, exp: NOW - 1 })],
    ["nbf in the future, bad signature", await token(hs256, { ...user, nbf: NOW + 60 }, "wrong secret")],
    ["wrong secret", await token(hs256, user, "wrong secret")],
    ["alg none", await token({ alg: "none" }, user, () => "")],
    ["alg RS256", await token({ alg: "RS256" }, user)],
    ["alg missing", await token({ typ: "JWT" }, user)],
    ["alg not a string", await token({ alg: ["HS256"] }, user)],
    ["signature empty", await token(hs256, user, () => "")],
    ["signature cut short", await token(hs256, user, (good) => good.slice(0, -4))],
    ["signature lengthened", await token(hs256, user, (good) => `${good}AAAA`)],
    ["signature with a + (not base64url)", await token(hs256, user, (good) => `+${good.slice(1)}`)],
    ["signature padded", await token(hs256, user, (good) => `${good}=`)],
    ["signature with a space", await token(hs256, user, (good) => `${good.slice(0, 8)} ${good.slice(8)}`)],
    ["signature not base64url at all", await token(hs256, user, () => "%%%")],
    ["crit b64 with b64 false", await token(b64False, user)],
    ["crit b64 with b64 false, bad signature", await token(b64False, user, "wrong secret")],
    ["crit b64 with b64 true", await token({ ...b64False, b64: true }, user)],
    ["crit b64 with b64 a string", await token({ ...b64False, b64: "false" }, user)],
    ["crit b64 without b64", await token({ alg: "HS256", crit: ["b64"] }, user)],
    ["crit b64 twice", await token({ ...b64False, b64: true, crit: ["b64", "b64"] }, user)],
    ["crit unknown", await token({ alg: "HS256", crit: ["exp"], exp: 1 }, user)],
    ["crit empty", await token({ alg: "HS256", crit: [] }, user)],
    ["crit not a list", await token({ alg: "HS256", crit: "b64", b64: false }, user)],
    ["crit with an empty name", await token({ alg: "HS256", crit: [""] }, user)],
    ["b64 false without crit", await token({ alg: "HS256", b64: false }, user)],
    ["header not JSON", await token(new TextEncoder().encode("{alg: HS256}"), user)],
    ["header a list", await token(["HS256"], user)],
    ["payload a list", await token(hs256, [user])],
    ["payload not UTF-8", await token(hs256, new Uint8Array([0x7b, 0xff, 0x7d]))],
    ["payload empty", await token(hs256, new Uint8Array())],
    ["two parts", (await token(hs256, user)).split(".").slice(0, 2).join(".")],
    ["four parts", `${await token(hs256, user)}.x`],
    ["not a string", 42],
    ["an API key", "sb_publishable_abc"],
    ["alg None", await token({ alg: "None" }, user)],
    ["alg hs256", await token({ alg: "hs256" }, user)],
    ["alg twice, none then HS256", await token(raw('{"alg":"none","alg":"HS256"}'), user)],
    ["alg twice, HS256 then none", await token(raw('{"alg":"HS256","alg":"none"}'), user)],
    ["role twice", await token(hs256, raw(`{"role":"service_role","role":"anon","exp":${NOW + 600}}`))],
    ["exp 1e999 (Infinity)", await token(hs256, raw(`{"role":"anon","exp":1e999}`))],
    ["exp a fraction ahead", await token(hs256, raw(`{"role":"anon","exp":${NOW}.5}`))],
    ["exp a fraction behind", await token(hs256, raw(`{"role":"anon","exp":${NOW - 1}.5}`))],
    ["exp null", await token(hs256, { ...user, exp: null })],
    ["nbf a fraction ahead", await token(hs256, raw(`{"role":"anon","exp":${NOW + 600},"nbf":${NOW}.5}`))],
    ["iat null", await token(hs256, { ...user, iat: null })],
    ["payload a string", await token(hs256, "claims")],
    ["payload null", await token(hs256, null)],
    ["header null", await token(null, user)],
    ["crit null", await token({ alg: "HS256", crit: null }, user)],
    ["crit b64 with b64 null", await token({ alg: "HS256", crit: ["b64"], b64: null }, user)],
    ["signature with a set trailing bit", await token(hs256, user, trailingBitSet)],
    ["signature padded twice", await token(hs256, user, (good) => `${good}==`)],
    // An empty secret: jose's WebCrypto refused the key (DataError), so every HS token was malformed;
    // an HMAC with the empty key is one anybody can compute.
    ["secret empty, signed with the empty key", await token(hs256, user, "empty secret"), ""],
    ["secret empty, signed with the project's secret", await token(hs256, user), ""],
    [
      "secret empty, expired, signed with the empty key",
      await token(hs256, { ...user, exp: NOW - 30 }, "empty secret"),
      "",
    ],
    ["secret empty, alg RS256", await token({ alg: "RS256" }, user, "empty secret"), ""],
    ["secret empty, not a JWT", "sb_publishable_abc", ""],
  ];
  const expected = await Promise.all(cases.map(([, t, secret]) => joseDecision(t, NOW, secret)));
  // From here WebCrypto refuses to work: a verifier that still used it (jose's jwtVerify awaits it, a turn
  // of the event loop) would decide otherwise.
  const subtle = crypto.subtle as unknown as Record<string, unknown>;
  const used: string[] = [];
  for (const method of ["importKey", "sign", "verify", "digest"]) {
    Object.defineProperty(subtle, method, {
      configurable: true,
      value: () => {
        used.push(method);
        return Promise.reject(new Error(`WebCrypto's ${method} was used`));
      },
    });
  }
  try {
    const verifiers = new Map<string, TokenVerifier>();
    for (const [i, [name, t, secret = SECRET]] of cases.entries()) {
      const verifier = verifiers.get(secret) ?? new TokenVerifier(secret);
      verifiers.set(secret, verifier);
      assert.deepEqual(await verifier.verify(t, NOW), expected[i], name);
      // And the same again from the cache.
      assert.deepEqual(await verifier.verify(t, NOW), expected[i], `${name}, again`);
    }
  } finally {
    for (const method of ["importKey", "sign", "verify", "digest"]) delete subtle[method];
  }
  assert.deepEqual(used, [], "the verifier waited for WebCrypto");
  // The cases cover each of the verifier's answers.
  const answers = new Set(expected.map((r) => r.ok ? "ok" : r.failure.kind));
  assert.deepEqual([...answers].sort(), ["expired", "malformed", "missing_claims", "ok", "signature"]);
});
