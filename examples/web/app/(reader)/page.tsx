import { LiveLibrary } from "@/components/LiveLibrary.tsx";
import { loadLibrary } from "@/lib/server/progress.ts";
import { getSession } from "@/lib/server/session.ts";
import { redirect } from "next/navigation";

export const dynamic = "force-dynamic";

// Server component: the library comes from the progress function with the user's own token
// (auth checked here on the server); LiveLibrary keeps it current through Realtime.
export default async function LibraryPage() {
  const session = await getSession();
  if (!session) redirect("/sign-in");
  const rows = await loadLibrary(session.accessToken);
  return <LiveLibrary initialRows={rows} renderedFor={session.userId} />;
}
