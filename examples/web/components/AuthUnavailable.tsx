"use client";

/** The reader pages while Supabase Auth does not answer: not a sign-out, and nothing is lost. */
export function AuthUnavailable() {
  return (
    <section className="card notice-error" role="alert" data-testid="load-error">
      <h2>Could not reach the sign-in service</h2>
      <p>You are still signed in and your place is safe; try again in a moment.</p>
      <button type="button" onClick={() => window.location.reload()}>Try again</button>
    </section>
  );
}
