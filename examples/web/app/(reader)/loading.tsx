export default function Loading() {
  return (
    <section className="card" aria-busy="true" data-testid="loading">
      <h2>Loading your library…</h2>
      <div className="skeleton" />
      <div className="skeleton" />
      <div className="skeleton" />
    </section>
  );
}
