// Verifying Supabase access tokens (JWTs) in an edge function, with jose.
//
// Keys, by the token's `alg`:
//   HS256                      the project's JWT secret (legacy; locally SUPABASE_JWT_SECRET), or a
//                              symmetric ("oct") key in the JWKS: `supabase functions serve` hands the
//                              local secret over only that way (SUPABASE_JWKS), besides
//                              SUPABASE_INTERNAL_JWT_SECRET (see server.ts)
//   ES256 / RS256 / EdDSA ...  the project's signing keys: a JWKS given as JSON (hosted functions get
//                              SUPABASE_JWKS) or fetched from a URL (<SUPABASE_URL>/auth/v1/.well-known/jwks.json)
// Checks: signature, `exp` present and not passed, `nbf`, `iss` when configured, `role` and `sub`
// strings when present, `aud` when configured (a token WITHOUT aud, like the anon key, passes the aud
// check unless requireAudience: whether such a token may do anything is an authorization decision
// for the caller, who sees `role`). Errors are JwtError with a code the caller maps to 401 (or 503
// when the key server is down).

import {
  base64url,
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeProtectedHeader,
  errors as joseErrors,
  type JSONWebKeySet,
  type JWTPayload,
  jwtVerify,
  type JWTVerifyGetKey,
} from "jose";

export interface JwtClaims extends JWTPayload {
  sub?: string;
  role?: string;
  email?: string;
  session_id?: string;
  is_anonymous?: boolean;
  [claim: string]: unknown;
}

export type JwtErrorCode =
  | "missing_token"
  | "malformed_token"
  | "unsupported_algorithm"
  | "invalid_signature"
  | "token_expired"
  | "token_not_yet_valid"
  | "invalid_audience"
  | "invalid_issuer"
  | "invalid_claims"
  | "keys_unavailable";

export class JwtError extends Error {
  readonly code: JwtErrorCode;
  constructor(code: JwtErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "JwtError";
    this.code = code;
  }
}

export interface JwtVerifierOptions {
  /** HS256 secret (the project's legacy JWT secret). */
  secret?: string;
  /** A JWKS as an object or JSON text (e.g. the SUPABASE_JWKS env var). */
  jwks?: JSONWebKeySet | string;
  /** Where to fetch the JWKS (cached by jose; refetched for an unknown kid). */
  jwksUrl?: string | URL;
  /** Expected audience(s). */
  audience?: string | readonly string[];
  /** Reject tokens without an aud claim (default false, see the header comment). */
  requireAudience?: boolean;
  issuer?: string | readonly string[];
  /** Allowed clock skew for exp/nbf/iat, seconds (default 0). */
  clockToleranceSeconds?: number;
  /** For tests: a stand-in for the remote JWKS fetcher. */
  remoteKeySet?: JWTVerifyGetKey;
}

export interface JwtVerifier {
  verify(token: string): Promise<JwtClaims>;
}

const ASYMMETRIC_ALGS = [
  "ES256",
  "ES384",
  "ES512",
  "RS256",
  "RS384",
  "RS512",
  "PS256",
  "PS384",
  "PS512",
  "EdDSA",
];

/**
 * What an Authorization header holds, for a resource server that takes Bearer tokens (RFC 6750):
 *   token      `Bearer <token>`: the scheme in any case (RFC 9110, 11.1), then one or more spaces and
 *              one token (RFC 9110, 11.4: `auth-scheme [ 1*SP ( token68 / #auth-param ) ]`)
 *   missing    no header, or credentials of another scheme (`Basic ...`): no Bearer authentication
 *              was attempted (RFC 6750, 3.1: such an answer carries no error code)
 *   malformed  the Bearer scheme with credentials that are not one token: none (`Bearer` alone), a
 *              separator other than spaces (a tab), two tokens or one with a space in it
 */
export type BearerCredentials =
  | { kind: "token"; token: string }
  | { kind: "missing" }
  | { kind: "malformed"; message: string };

export function bearerCredentials(header: string | null | undefined): BearerCredentials {
  if (!header || header.trim() === "") return { kind: "missing" };
  const scheme = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+/.exec(header)?.[0] ?? "";
  if (scheme.toLowerCase() !== "bearer") return { kind: "missing" };
  const rest = header.slice(scheme.length);
  const match = /^ +(\S+) *$/.exec(rest);
  if (match) return { kind: "token", token: match[1] };
  return {
    kind: "malformed",
    message: rest.trim() === ""
      ? "The Authorization header names the Bearer scheme but no token"
      : "The Authorization header must be `Bearer <token>`: one token, after one or more spaces",
  };
}

export function createJwtVerifier(options: JwtVerifierOptions): JwtVerifier {
  // HS256 keys: the secret first, then the JWKS's symmetric keys (jose's key sets take public keys only).
  const hmacKeys: { kid?: string; key: Uint8Array }[] = [];
  if (options.secret) hmacKeys.push({ key: new TextEncoder().encode(options.secret) });
  let localSet: JWTVerifyGetKey | null = null;
  if (options.jwks) {
    const set = typeof options.jwks === "string" ? JSON.parse(options.jwks) as JSONWebKeySet : options.jwks;
    const keys = Array.isArray(set.keys) ? set.keys : [];
    for (const jwk of keys) {
      if (jwk.kty === "oct" && typeof jwk.k === "string" && (jwk.alg === undefined || jwk.alg === "HS256")) {
        hmacKeys.push({ kid: jwk.kid, key: base64url.decode(jwk.k) });
      }
    }
    const publicKeys = keys.filter((jwk) => jwk.kty !== "oct");
    if (publicKeys.length > 0) localSet = createLocalJWKSet({ keys: publicKeys });
  }
  let remoteSet: JWTVerifyGetKey | null = options.remoteKeySet ?? null;
  if (!remoteSet && options.jwksUrl) remoteSet = createRemoteJWKSet(new URL(options.jwksUrl));
  const audiences = options.audience === undefined
    ? null
    : typeof options.audience === "string"
    ? [options.audience]
    : [...options.audience];

  async function verify(token: string): Promise<JwtClaims> {
    if (!token) throw new JwtError("missing_token", "No access token");
    let alg: string | undefined;
    let kid: string | undefined;
    try {
      ({ alg, kid } = decodeProtectedHeader(token));
    } catch (cause) {
      throw new JwtError("malformed_token", "The access token is not a JWT", { cause });
    }
    let key: Uint8Array | JWTVerifyGetKey;
    if (alg === "HS256") {
      const hmac = (kid === undefined ? undefined : hmacKeys.find((k) => k.kid === kid)) ?? hmacKeys[0];
      if (!hmac) {
        throw new JwtError(
          "unsupported_algorithm",
          "HS256 tokens are not accepted (no JWT secret configured)",
        );
      }
      key = hmac.key;
    } else if (alg && ASYMMETRIC_ALGS.includes(alg)) {
      const keySet = localSet ?? remoteSet;
      if (!keySet) {
        throw new JwtError("unsupported_algorithm", `${alg} tokens are not accepted (no JWKS configured)`);
      }
      // A local set that lacks the kid falls back to the remote set (key rotation).
      key = localSet && remoteSet
        ? async (header, input) => {
          try {
            return await localSet!(header, input);
          } catch (error) {
            if (error instanceof joseErrors.JWKSNoMatchingKey) return await remoteSet!(header, input);
            throw error;
          }
        }
        : keySet;
    } else {
      throw new JwtError("unsupported_algorithm", `Unsupported JWT algorithm: ${alg ?? "none"}`);
    }

    let payload: JwtClaims;
    try {
      const verified = typeof key === "function"
        ? await jwtVerify(token, key, {
          algorithms: [alg],
          issuer: options.issuer as string | string[] | undefined,
          requiredClaims: ["exp"],
          clockTolerance: options.clockToleranceSeconds ?? 0,
        })
        : await jwtVerify(token, key, {
          algorithms: [alg],
          issuer: options.issuer as string | string[] | undefined,
          requiredClaims: ["exp"],
          clockTolerance: options.clockToleranceSeconds ?? 0,
        });
      payload = verified.payload as JwtClaims;
    } catch (error) {
      throw mapJoseError(error);
    }
    // JwtClaims promises strings. A `"role": ["authenticated"]` is no role (PostgREST would SET ROLE to
    // its JSON text and answer 401 for that unknown role): the token is invalid, not merely unprivileged.
    for (const claim of ["role", "sub"] as const) {
      if (payload[claim] !== undefined && typeof payload[claim] !== "string") {
        throw new JwtError("invalid_claims", `The access token's ${claim} claim is not a string`);
      }
    }

    if (audiences) {
      const aud = payload.aud === undefined ? [] : Array.isArray(payload.aud) ? payload.aud : [payload.aud];
      if (aud.length === 0) {
        if (options.requireAudience) {
          throw new JwtError("invalid_audience", "The access token has no audience");
        }
      } else if (!aud.some((a) => audiences.includes(a))) {
        throw new JwtError(
          "invalid_audience",
          `The access token is not for this audience (${audiences.join(", ")})`,
        );
      }
    }
    return payload;
  }

  return { verify };
}

function mapJoseError(error: unknown): JwtError {
  if (error instanceof JwtError) return error;
  if (error instanceof joseErrors.JWTExpired) {
    return new JwtError("token_expired", "The access token has expired", { cause: error });
  }
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    if (error.claim === "nbf") {
      return new JwtError("token_not_yet_valid", "The access token is not valid yet", { cause: error });
    }
    if (error.claim === "iss") {
      return new JwtError("invalid_issuer", "The access token has the wrong issuer", { cause: error });
    }
    if (error.claim === "aud") {
      return new JwtError("invalid_audience", "The access token has the wrong audience", { cause: error });
    }
    return new JwtError(
      "invalid_claims",
      `The access token's ${error.claim} claim is invalid: ${error.reason}`,
      { cause: error },
    );
  }
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) {
    return new JwtError("invalid_signature", "The access token's signature is invalid", { cause: error });
  }
  if (error instanceof joseErrors.JWKSNoMatchingKey || error instanceof joseErrors.JWKSMultipleMatchingKeys) {
    return new JwtError("invalid_signature", "The access token was signed with an unknown key", {
      cause: error,
    });
  }
  const keyServerDown = error instanceof joseErrors.JOSEError &&
    /JSON Web Key Set HTTP response/.test(error.message); // non-200 or non-JSON from the JWKS URL
  if (
    keyServerDown || error instanceof joseErrors.JWKSTimeout || error instanceof joseErrors.JWKSInvalid ||
    error instanceof TypeError // fetch failed
  ) {
    return new JwtError("keys_unavailable", "The signing keys could not be loaded", { cause: error });
  }
  if (error instanceof joseErrors.JOSEError) {
    return new JwtError("malformed_token", `The access token is invalid: ${error.message}`, { cause: error });
  }
  return new JwtError("malformed_token", "The access token is invalid", { cause: error });
}
