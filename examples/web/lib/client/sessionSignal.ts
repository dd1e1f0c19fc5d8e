// Tabs of one browser share its session (cookies) but each keeps the token it was rendered with
// until it asks /auth/token again, which it does only near the token's expiry. So a page that
// learns the session changed tells the others through localStorage (a `storage` event in every
// other tab): the sign-in page, which renders only without a session (signed out), and a reader
// page, for the user it was rendered for. A tab that hears of another user, or of none, asks
// /auth/token at once and leaves when the session is not its user's any more.

export const SESSION_SIGNAL_KEY = "readsync.session";

/** What a page says of this browser's session: the signed-in user's id, or null when signed out. */
export function announceSession(userId: string | null): void {
  try {
    window.localStorage.setItem(SESSION_SIGNAL_KEY, JSON.stringify({ userId, at: Date.now() }));
  } catch {
    // storage blocked: other tabs notice when they next ask for a token
  }
}

/** Whether a `storage` event says the session is no longer `userId`'s. */
export function sessionChangedFor(event: { key: string | null; newValue: string | null }, userId: string): boolean {
  if (event.key !== SESSION_SIGNAL_KEY || event.newValue === null) return false;
  try {
    const said = JSON.parse(event.newValue) as { userId?: unknown };
    return said.userId !== userId;
  } catch {
    return true; // unreadable: ask /auth/token, which knows
  }
}
