"use client";

// retry(), not reset(): reset() only clears the boundary and re-renders the server answer it already
// has (the error again); retry() fetches the segment again, so the page recovers once the service does.
export default function SeriesError({ error, retry }: { error: Error & { digest?: string }; retry: () => void }) {
  return (
    <section className="card notice-error" role="alert" data-testid="load-error">
      <h2>Could not load your position in this series</h2>
      <p>The progress service did not answer. Your place is safe; try again in a moment.</p>
      {error.digest && <p className="meta">Reference: {error.digest}</p>}
      <button type="button" onClick={() => retry()}>Try again</button>
    </section>
  );
}
