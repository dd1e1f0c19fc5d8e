// JWT verification for the local Realtime endpoint, with the error texts Supabase Realtime uses.
//
// Supabase verifies the channel's access token (or, when the join carries none or an API key
// `sb_…`, the socket's apikey) with the project JWT secret (HS256/384/512), requires the `role` and `exp` claims, and
// rejects tokens whose `exp` is not in the future. The reasons below are the strings the real
// server puts in `phx_reply` errors ("<Code>: <message>") and in `system` messages (message only).

import { decodeJwt, decodeProtectedHeader, errors as joseErrors, jwtVerify } from "jose";

export type JwtClaims = Record<string, unknown> & { role: string; exp: number; sub?: string };

export type TokenFailure =
  | { code: "MalformedJWT"; kind: "malformed"; message: string }
  | { code: "InvalidJWTToken"; kind: "missing_claims"; message: string }
  | { code: "InvalidJWTToken"; kind: "expired"; message: string }
  | { code: "JwtSignatureError"; kind: "signature"; message: string };

export type TokenResult = { ok: true; claims: JwtClaims } | { ok: false; failure: TokenFailure };

const HS_ALGORITHMS = ["HS256", "HS384", "HS512"];

/**
 * How many verified tokens the verifier keeps besides the pinned ones (see TokenVerifier.pin): the least
 * recently used goes when another comes.
 */
export const TOKEN_CACHE_CAPACITY = 10_000;

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
  async pin(token: string, nowSeconds = Math.floor(Date.now() / 1000)): Promise<TokenResult> {
    const result = await this.verify(token, nowSeconds);
    if (result.ok) {
      this.#cache.delete(token);
      this.#pinned.set(token, result.claims);
    }
    return result;
  }

  async verify(token: unknown, nowSeconds = Math.floor(Date.now() / 1000)): Promise<TokenResult> {
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

    let header: ReturnType<typeof decodeProtectedHeader>;
    let unverified: Record<string, unknown>;
    try {
      header = decodeProtectedHeader(token);
      unverified = decodeJwt(token) as Record<string, unknown>;
    } catch {
      return fail("MalformedJWT", "malformed", "The token provided is not a valid JWT");
    }
    if (!header.alg || !HS_ALGORITHMS.includes(header.alg)) {
      return fail("JwtSignatureError", "signature", "Failed to validate JWT signature");
    }
    try {
      // jose checks the signature before the claims, so JWTExpired means a good signature; the
      // expiry itself is reported below in Supabase's words.
      await jwtVerify(token, this.#key, {
        algorithms: HS_ALGORITHMS,
        currentDate: new Date(nowSeconds * 1000),
      });
    } catch (error) {
      if (error instanceof joseErrors.JWSSignatureVerificationFailed) {
        return fail("JwtSignatureError", "signature", "Failed to validate JWT signature");
      }
      if (!(error instanceof joseErrors.JWTExpired)) {
        return fail("MalformedJWT", "malformed", "The token provided is not a valid JWT");
      }
    }
    if (typeof unverified.role !== "string" || typeof unverified.exp !== "number") {
      return fail("InvalidJWTToken", "missing_claims", "Fields `role` and `exp` are required in JWT");
    }
    const claims = unverified as JwtClaims;
    if (claims.exp > nowSeconds) {
      this.#cache.set(token, claims);
      if (this.#cache.size > TOKEN_CACHE_CAPACITY) this.#cache.delete(this.#cache.keys().next().value!);
    }
    return checkExpiry(claims, nowSeconds);
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
