import type { Metadata } from "next";
import { redirect } from "next/navigation";
import { devSignIn } from "@/lib/server/config.ts";
import { getSession } from "@/lib/server/session.ts";
import { DevSignInForm, SupabaseSignInForms } from "./SignInForms.tsx";

export const metadata: Metadata = { title: "Sign in · readsync" };
export const dynamic = "force-dynamic";

export default async function SignInPage() {
  if (await getSession()) redirect("/");
  const dev = devSignIn();
  return (
    <main className="narrow">
      <h1>readsync</h1>
      <p className="muted">Your place in every series, on every device.</p>
      {dev.enabled ? <DevSignInForm defaultEmail="demo@readsync.local" /> : <SupabaseSignInForms />}
    </main>
  );
}
