// JWT verification for the local Realtime endpoint, with the error texts Supabase Realtime uses.
//
// Supabase verifies the channel's access token (or, when the join carries none or an API key
// `sb_…`, the socket's apikey) with the project JWT secret (HS256/384/512), requires the `role` and `exp` claims, and
// rejects tokens whose `exp` is not in the future. The reasons below are the strings the real
// server puts in `phx_reply` errors ("<Code>: <message>") and in `system` messages (message only).

import { createHmac, timingSafeEqual } from "node:crypto";
import { base64url, decodeJwt, decodeProtectedHeader } from "jose";

export type JwtClaims = Record<string, unknown> & { role: string; exp: number; sub?: string };

export type TokenFailure =
  | { code: "MalformedJWT"; kind: "malformed"; message: string }
  | { code: "InvalidJWTToken"; kind: "missing_claims"; message: string }
  | { code: "InvalidJWTToken"; kind: "expired"; message: string }
  | { code: "JwtSignatureError"; kind: "signature"; message: string };

export type TokenResult = { ok: true; claims: JwtClaims } | { ok: false; failure: TokenFailure };

/** The HMAC algorithms a token may be signed with, and node:crypto's name of each one's hash. */
const HS_HASHES: Record<string, string> = { HS256: "sha256", HS384: "sha384", HS512: "sha512" };

/**
 * How many verified tokens the verifier keeps besides the pinned ones (see TokenVerifier.pin): the least
 * recently used goes when another comes.
 */
export const TOKEN_CACHE_CAPACITY = 10_000;

/**
 * Verifies tokens without waiting for anything: the HMAC is node:crypto's, computed at once, where jose's
 * jwtVerify awaited WebCrypto, a turn of the event loop during which a client connecting with a key not
 * seen before could leave unseen (endpoint.ts upgrade(): Deno.serve then never completes nor fails its
 * upgrade). The checks are jose 6's jwtVerify's, in its order, as the verifier made them with it before
 * (auth.test.ts compares the two), and their failures keep the codes Supabase gives them.
 */
export class TokenVerifier {
  #key: Uint8Array;
  /** The project's keys, verified when the endpoint starts: never evicted (see pin). */
  #pinned = new Map<string, JwtClaims>();
  /**
   * Other tokens verified, least recently used first (a Map keeps insertion order; a hit moves its token
   * to the end): the same token is verified again on every join of every channel of a device.
   */
  #cache = new Map<string, JwtClaims>();

  constructor(secret: string) {
    this.#key = new TextEncoder().encode(secret);
  }

  /**
   * Verifies a key the verifier keeps for good (the project's anon and service-role keys), so that every
   * later check of it is a look-up, however many other tokens come; a key that fails is not kept.
   */
  pin(token: string, nowSeconds = Math.floor(Date.now() / 1000)): Promise<TokenResult> {
    const result = this.check(token, nowSeconds);
    if (result.ok) {
      this.#cache.delete(token);
      this.#pinned.set(token, result.claims);
    }
    return Promise.resolve(result);
  }

  /** check() as a promise (it settles without waiting for anything), for the callers that await it. */
  verify(token: unknown, nowSeconds = Math.floor(Date.now() / 1000)): Promise<TokenResult> {
    return Promise.resolve(this.check(token, nowSeconds));
  }

  check(token: unknown, nowSeconds = Math.floor(Date.now() / 1000)): TokenResult {
    if (typeof token !== "string" || token.split(".").length !== 3) {
      return fail("MalformedJWT", "malformed", "The token provided is not a valid JWT");
    }
    const pinned = this.#pinned.get(token);
    if (pinned) return checkExpiry(pinned, nowSeconds);
    const cached = this.#cache.get(token);
    if (cached) {
      this.#cache.delete(token);
      // An expired token stays expired: it is not kept.
      if (cached.exp > nowSeconds) this.#cache.set(token, cached);
      return checkExpiry(cached, nowSeconds);
    }
    const verified = this.#verifySignature(token, nowSeconds);
    if (!verified.ok) return verified;
    const claims = verified.claims;
    if (claims.exp > nowSeconds) {
      this.#cache.set(token, claims);
      if (this.#cache.size > TOKEN_CACHE_CAPACITY) this.#cache.delete(this.#cache.keys().next().value!);
    }
    return checkExpiry(claims, nowSeconds);
  }

  /**
   * The token's header, signature and claims checked as jose 6's jwtVerify (with the HS algorithms and
   * `currentDate`) checks them, then the claims Supabase requires; the expiry is left to checkExpiry.
   */
  #verifySignature(token: string, nowSeconds: number): TokenResult {
    const malformed = () => fail("MalformedJWT", "malformed", "The token provided is not a valid JWT");
    let header: ReturnType<typeof decodeProtectedHeader>;
    let unverified: Record<string, unknown>;
    try {
      header = decodeProtectedHeader(token);
      unverified = decodeJwt(token) as Record<string, unknown>;
    } catch {
      return malformed();
    }
    const hash = typeof header.alg === "string" && Object.hasOwn(HS_HASHES, header.alg)
      ? HS_HASHES[header.alg]
      : undefined;
    if (!hash) return fail("JwtSignatureError", "signature", "Failed to validate JWT signature");
    // jose's critical header check: only "b64" is understood, and it must be in the header, a boolean.
    const crit: unknown = header.crit;
    if (crit !== undefined) {
      if (
        !Array.isArray(crit) || crit.length === 0 ||
        crit.some((name) => name !== "b64") || typeof header.b64 !== "boolean"
      ) return malformed();
    }
    const [encodedHeader, encodedPayload, encodedSignature] = token.split(".");
    let signature: Uint8Array;
    try {
      signature = base64url.decode(encodedSignature);
    } catch {
      return malformed();
    }
    // An empty secret verifies nothing: jose's WebCrypto refused the empty key (DataError), so every token
    // was malformed, where node:crypto would accept an HMAC with the empty key, one anybody can compute.
    if (this.#key.length === 0) return malformed();
    // The signing input is the same bytes whether or not the payload is base64url-encoded ("b64": false):
    // decodeJwt has checked that it is base64url, so it is ASCII.
    const expected = createHmac(hash, this.#key).update(`${encodedHeader}.${encodedPayload}`).digest();
    if (signature.length !== expected.length || !timingSafeEqual(signature, expected)) {
      return fail("JwtSignatureError", "signature", "Failed to validate JWT signature");
    }
    // jose refuses a JWT whose payload it is told is not encoded (`"b64": false`, critical), and then checks
    // iat, nbf and exp (an expired token is JWTExpired, which means a good signature: reported by
    // checkExpiry in Supabase's words).
    if (crit !== undefined && header.b64 === false) return malformed();
    for (const claim of ["iat", "nbf", "exp"]) {
      if (unverified[claim] !== undefined && typeof unverified[claim] !== "number") return malformed();
    }
    if (typeof unverified.nbf === "number" && unverified.nbf > nowSeconds) return malformed();
    if (typeof unverified.role !== "string" || typeof unverified.exp !== "number") {
      return fail("InvalidJWTToken", "missing_claims", "Fields `role` and `exp` are required in JWT");
    }
    return { ok: true, claims: unverified as JwtClaims };
  }
}

function checkExpiry(claims: JwtClaims, nowSeconds: number): TokenResult {
  const diff = claims.exp - nowSeconds;
  if (diff <= 0) return fail("InvalidJWTToken", "expired", `Token has expired ${Math.abs(diff)} seconds ago`);
  return { ok: true, claims };
}

function fail(code: TokenFailure["code"], kind: TokenFailure["kind"], message: string): TokenResult {
  return { ok: false, failure: { code, kind, message } as TokenFailure };
}

/**
 * The `system` message of a channel closed by an `access_token` push whose token fails, as
 * Supabase's apply_access_token (realtime_channel.ex) words it: expired, malformed and claim-less
 * tokens have clauses of their own that carry the message; a bad signature (JwtVerification's
 * `{:error, :signature_error}`) falls to its catch-all `shutdown_response(socket, inspect(error))`,
 * so the message is the atom as Elixir prints it.
 */
export function pushShutdownMessage(failure: TokenFailure): string {
  return failure.kind === "signature" ? ":signature_error" : failure.message;
}

/** `phx_reply` error reason, as Supabase formats join failures. */
export function joinReason(failure: { code: string; message: string }): string {
  return `${failure.code}: ${failure.message}`;
}
