import type { Metadata } from "next";
import { redirect } from "next/navigation";
import { devSignIn } from "@/lib/server/config.ts";
import { getSession } from "@/lib/server/session.ts";
import { DevSignInForm, SupabaseSignInForms } from "./SignInForms.tsx";
import { SignedOutSignal } from "./SignedOutSignal.tsx";

export const metadata: Metadata = { title: "Sign in · readsync" };
export const dynamic = "force-dynamic";

export default async function SignInPage({ searchParams }: { searchParams: Promise<{ error?: string }> }) {
  if (await getSession()) redirect("/");
  const dev = devSignIn();
  const { error } = await searchParams;
  return (
    <main className="narrow">
      <SignedOutSignal />
      <h1>readsync</h1>
      <p className="muted">Your place in every series, on every device.</p>
      {error === "link" && (
        <p role="alert" className="notice notice-error">
          That sign-in link is invalid or has expired. Ask for a new one below.
        </p>
      )}
      {dev.enabled ? <DevSignInForm defaultEmail="demo@readsync.local" /> : <SupabaseSignInForms />}
    </main>
  );
}
