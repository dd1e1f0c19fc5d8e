import Link from "next/link";

export default function NotFound() {
  return (
    <main className="narrow">
      <h1>Not found</h1>
      <p><Link href="/">Back to your library</Link></p>
    </main>
  );
}
