"use client";

export default function SeriesError({ error, reset }: { error: Error & { digest?: string }; reset: () => void }) {
  return (
    <section className="card notice-error" role="alert" data-testid="load-error">
      <h2>Could not load your position in this series</h2>
      <p>The progress service did not answer. Your place is safe; try again in a moment.</p>
      {error.digest && <p className="meta">Reference: {error.digest}</p>}
      <button type="button" onClick={reset}>Try again</button>
    </section>
  );
}
