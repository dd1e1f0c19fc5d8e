export default function Loading() {
  return (
    <section className="card" aria-busy="true" data-testid="loading">
      <h2>Loading position…</h2>
      <div className="skeleton" />
    </section>
  );
}
