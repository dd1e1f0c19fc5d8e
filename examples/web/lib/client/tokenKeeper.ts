// Keeps the browser's access token fresh: the server handed over one with the page; shortly before
// it expires (or when the API says 401) a new one comes from GET /auth/token, which reads the
// server-side session (and, in Supabase mode, refreshes it).
//
// Three things a browser tab cannot take for granted:
//   - its clock: expiry is judged by `now` (the provider passes the ServerClock), so a device
//     whose clock is an hour slow still refreshes before the server stops taking the token;
//   - the session's user: another tab may have signed out and in as someone else. The cookie
//     session (hence GET /auth/token) is then the other user's; this tab's outbox and view are
//     still the first user's, so a token for anyone else is never handed out here — the keeper
//     is signed out instead (SignedOutError with `userChanged`) and the page must reload;
//   - the network: a refresh that hangs is aborted after `timeoutMs`, so a flush waiting for a
//     token does not wait forever.

export class SignedOutError extends Error {
  override name = "SignedOutError";
  /** The session now belongs to another user (signed in again in another tab). */
  readonly userChanged: boolean;
  constructor(message: string, options: { userChanged?: boolean } = {}) {
    super(message);
    this.userChanged = options.userChanged ?? false;
  }
}

/**
 * Whether `error` is a SignedOutError, or a failure caused by one: thrown by the access-token
 * callback of a supabase-js client (lib/progressClient.ts userClient), it reaches whoever made the
 * request wrapped (a FunctionsFetchError, then the progress API client's NetworkError, each with
 * the one before as its cause), and would otherwise be taken for a network failure.
 */
export function isSignedOut(error: unknown): boolean {
  for (let e = error, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof SignedOutError) return true;
  }
  return false;
}

export interface TokenKeeperOptions {
  /** Whose token this is; a refresh answering for another user signs this keeper out. */
  userId: string;
  /** The current time in epoch ms, as the server counts it (default: this device's clock). */
  now?: () => number;
  /** How long GET /auth/token may take (default 10 s). */
  timeoutMs?: number;
  /**
   * Whether `now` is known to be the server's time (measured by an answer; default: yes): when not, a token expired
   * by it is not known unusable (knownUnusable). A device clock an hour ahead with no answer yet would otherwise
   * hold back the very request whose answer corrects it.
   */
  nowMeasured?: () => boolean;
}

export const TOKEN_REFRESH_TIMEOUT_MS = 10_000;
/** With this many seconds or fewer left, the token is refreshed before it is sent (get, dueForRefresh). */
export const TOKEN_REFRESH_BELOW_S = 60;

export class TokenKeeper {
  #token: string;
  #expiresAt: number; // seconds since the epoch
  #refreshing: Promise<string> | null = null;
  #signedOut: SignedOutError | null = null;
  /** The API answered 401 for the token held (refused), since the last refresh that answered a token. */
  #refused = false;
  #listeners = new Set<(token: string) => void>();
  readonly #userId: string;
  readonly #now: () => number;
  readonly #timeoutMs: number;
  readonly #nowMeasured: () => boolean;

  constructor(token: string, expiresAt: number, options: TokenKeeperOptions) {
    this.#token = token;
    this.#expiresAt = expiresAt;
    this.#userId = options.userId.toLowerCase();
    this.#now = options.now ?? (() => Date.now());
    this.#timeoutMs = options.timeoutMs ?? TOKEN_REFRESH_TIMEOUT_MS;
    this.#nowMeasured = options.nowMeasured ?? (() => true);
  }

  get current(): string {
    return this.#token;
  }

  /** Seconds until the current token expires (by the server's clock as this device knows it). */
  get remaining(): number {
    return this.#expiresAt - this.#now() / 1000;
  }

  onChange(listener: (token: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * The API answered 401 for the token held (expired by its clock, or no longer taken): known unusable
   * (knownUnusable) until a refresh answers a token, the same one included (Auth vouches for it).
   */
  refused(): void {
    this.#refused = true;
  }

  /**
   * Whether the token held is known not to be taken: the API refused it (refused) since the last refresh that
   * answered, or it has expired by the server's clock as measured (nowMeasured). A request with it is a 401.
   */
  get knownUnusable(): boolean {
    return this.#refused || (this.remaining <= 0 && this.#nowMeasured());
  }

  /** Whether the token expires within TOKEN_REFRESH_BELOW_S: get() refreshes it first. */
  get dueForRefresh(): boolean {
    return this.remaining <= TOKEN_REFRESH_BELOW_S;
  }

  /**
   * The token to send now: refreshed first when it expires within a minute or the API refused it (refused; best
   * effort offline), unless `refresh` is false: the caller refreshed it already where a wait costs nothing (the
   * outbox, before it takes the tabs' Web Lock), and a request under that lock must not wait a refresh's timeout
   * again. A refused token not due went on in the Realtime link's reads (each refused 401, the link waiting for a
   * new token) until 120 s before its expiry, when the outbox, its refresh failed (Auth down) or made already in
   * that run, had no run left to ask one (its writes sent by another tab).
   */
  async get(options: { refresh?: boolean } = {}): Promise<string> {
    if (this.#signedOut) throw this.#signedOut;
    if (options.refresh === false || !(this.dueForRefresh || this.#refused)) return this.#token;
    try {
      return await this.refresh();
    } catch (error) {
      if (error instanceof SignedOutError) throw error;
      return this.#token; // offline: the request fails anyway and is retried
    }
  }

  /**
   * Asks GET /auth/token. Calls while one is under way share it, unless `fresh`: the caller learned
   * of something after that request left (another tab signed out), so it waits for it to settle and
   * asks again (the answer in flight describes the session before the change).
   */
  refresh(options: { fresh?: boolean } = {}): Promise<string> {
    if (this.#signedOut) return Promise.reject(this.#signedOut);
    if (options.fresh && this.#refreshing) {
      return this.#refreshing.then(() => this.refresh(), () => this.refresh());
    }
    this.#refreshing ??= (async () => {
      try {
        const response = await fetch("/auth/token", {
          cache: "no-store",
          credentials: "same-origin",
          signal: AbortSignal.timeout(this.#timeoutMs),
        });
        if (response.status === 401) {
          throw this.#signOut(new SignedOutError("signed out"));
        }
        if (!response.ok) {
          throw new Error(`token refresh failed: HTTP ${response.status}`);
        }
        const body = (await response.json()) as {
          accessToken: string;
          expiresAt: number;
          userId: string;
        };
        if (
          typeof body.userId !== "string" ||
          body.userId.toLowerCase() !== this.#userId
        ) {
          throw this.#signOut(
            new SignedOutError("signed in as another user", {
              userChanged: true,
            }),
          );
        }
        // The route's answer is checked before anything is taken: a token that is not a non-empty
        // string would be refused by the Realtime service (a TypeError) and sent as no token at all.
        if (
          typeof body.accessToken !== "string" ||
          body.accessToken === "" ||
          typeof body.expiresAt !== "number" ||
          !Number.isFinite(body.expiresAt)
        ) {
          throw new Error("token refresh failed: the answer has no token");
        }
        const changed = body.accessToken !== this.#token;
        this.#token = body.accessToken;
        this.#expiresAt = body.expiresAt;
        this.#refused = false;
        if (changed) {
          for (const listener of [...this.#listeners]) listener(this.#token);
        }
        return this.#token;
      } finally {
        this.#refreshing = null;
      }
    })();
    return this.#refreshing;
  }

  #signOut(error: SignedOutError): SignedOutError {
    this.#signedOut = error;
    return error;
  }
}
