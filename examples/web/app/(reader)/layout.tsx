import type { ReactNode } from "react";
import { headers } from "next/headers";
import { redirect } from "next/navigation";
import { ConnectionStatus, SyncErrorBanner } from "@/components/ConnectionStatus.tsx";
import { SyncProvider } from "@/components/SyncProvider.tsx";
import { publicConfig } from "@/lib/server/config.ts";
import { AuthUnavailable } from "@/components/AuthUnavailable.tsx";
import { AuthUnavailableError, getSession } from "@/lib/server/session.ts";

// Everything under (reader) needs a signed-in user; checked here, on the server, per request.
export default async function ReaderLayout({ children }: { children: ReactNode }) {
  let session;
  try {
    session = await getSession();
  } catch (error) {
    // The error.tsx files below cannot catch what this layout throws: without this, Next's generic
    // 500 page. An Auth outage is not a sign-out (the cookies stay), so: try again.
    if (!(error instanceof AuthUnavailableError)) throw error;
    return <main><AuthUnavailable /></main>;
  }
  if (!session) redirect("/sign-in");
  // The host the page was requested at (a phone on the network gets the API at the same address): Next's
  // x-forwarded-host, which it sets from Host as a request comes in and keeps on the request it makes to
  // itself to render a server action's redirect (sign-in's), whose own Host is the server's address.
  const requested = await headers();
  const config = publicConfig(requested.get("x-forwarded-host")?.split(",")[0].trim() ?? requested.get("host"));
  return (
    // Keyed by the user: a layout rendered for another user (signed in in another tab) gets a fresh
    // provider, never this one's store and outbox with the new user's token.
    <SyncProvider
      key={session.userId}
      supabaseUrl={config.supabaseUrl}
      anonKey={config.anonKey}
      userId={session.userId}
      accessToken={session.accessToken}
      expiresAt={session.expiresAt}
    >
      <main>
        <header className="topbar">
          {/* Sign out sits beside the reader's name, which the server renders, not after the
              connection status, which the page's script fills in (the device id, the status): there it
              moved when the page hydrated, and a press on the button the reader saw before (a slow
              device) landed beside it once the script ran, signing nobody out. A plain form POST, it
              needs no script: a click before hydration signs out too. */}
          <div className="topbar-left">
            <strong>readsync</strong>{" "}
            <span className="who" data-testid="signed-in-as">
              {session.email ?? session.userId}
              {session.mode === "dev" ? " (development sign-in)" : ""}
            </span>{" "}
            <form action="/sign-out" method="post">
              <button type="submit" className="secondary">Sign out</button>
            </form>
          </div>
          {/* The status area: its own root is the header's one .topbar-right. */}
          <ConnectionStatus />
        </header>
        <SyncErrorBanner />
        {children}
      </main>
    </SyncProvider>
  );
}
