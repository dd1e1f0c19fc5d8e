// Keeps the browser's access token fresh: the server handed over one with the page; shortly before
// it expires (or when the API says 401) a new one comes from GET /auth/token, which reads the
// server-side session (and, in Supabase mode, refreshes it).

export class SignedOutError extends Error {
  override name = "SignedOutError";
}

export class TokenKeeper {
  #token: string;
  #expiresAt: number; // seconds since the epoch
  #refreshing: Promise<string> | null = null;
  #listeners = new Set<(token: string) => void>();

  constructor(token: string, expiresAt: number) {
    this.#token = token;
    this.#expiresAt = expiresAt;
  }

  get current(): string {
    return this.#token;
  }

  /** Seconds until the current token expires. */
  get remaining(): number {
    return this.#expiresAt - Date.now() / 1000;
  }

  onChange(listener: (token: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The token to send now: refreshed first when it expires within a minute (best effort offline). */
  async get(): Promise<string> {
    if (this.remaining > 60) return this.#token;
    try {
      return await this.refresh();
    } catch (error) {
      if (error instanceof SignedOutError) throw error;
      return this.#token; // offline: the request fails anyway and is retried
    }
  }

  refresh(): Promise<string> {
    this.#refreshing ??= (async () => {
      try {
        const response = await fetch("/auth/token", { cache: "no-store", credentials: "same-origin" });
        if (response.status === 401) throw new SignedOutError("signed out");
        if (!response.ok) throw new Error(`token refresh failed: HTTP ${response.status}`);
        const body = (await response.json()) as { accessToken: string; expiresAt: number };
        const changed = body.accessToken !== this.#token;
        this.#token = body.accessToken;
        this.#expiresAt = body.expiresAt;
        if (changed) for (const listener of [...this.#listeners]) listener(this.#token);
        return this.#token;
      } finally {
        this.#refreshing = null;
      }
    })();
    return this.#refreshing;
  }
}
