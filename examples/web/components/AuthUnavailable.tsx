/**
 * The reader pages while Supabase Auth does not answer: not a sign-out, and nothing is lost. Try again
 * is a link to this same address (an empty href), not a button whose script reloads the page: it works
 * before the page's script has run (a slow device), where a script's button did nothing and its click
 * was not replayed once the page had hydrated.
 */
export function AuthUnavailable() {
  return (
    <section className="card notice-error" role="alert" data-testid="load-error">
      <h2>Could not reach the sign-in service</h2>
      <p>You are still signed in and your place is safe; try again in a moment.</p>
      <a href="" className="button">Try again</a>
    </section>
  );
}
