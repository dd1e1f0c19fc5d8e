"use client";

import { useActionState } from "react";
import { devSignInAction, magicLinkAction, passwordSignInAction, type SignInState } from "./actions.ts";

function Feedback({ state }: { state: SignInState }) {
  if (state.error) return <p className="notice notice-error" role="alert">{state.error}</p>;
  if (state.message) return <p className="notice" role="status">{state.message}</p>;
  return null;
}

export function DevSignInForm({ defaultEmail }: { defaultEmail: string }) {
  const [state, action, pending] = useActionState(devSignInAction, {});
  return (
    <form action={action} className="card dev-only" data-testid="dev-sign-in">
      <h2>Development sign-in</h2>
      <p className="dev-label">
        DEVELOPMENT ONLY — local stack. Signs in as any email without a password by minting a token with
        the local JWT secret. Never available against a real Supabase project.
      </p>
      <label>
        Email
        <input name="email" type="email" required defaultValue={defaultEmail} autoComplete="email" />
      </label>
      <button type="submit" disabled={pending}>{pending ? "Signing in…" : "Sign in (development)"}</button>
      <Feedback state={state} />
    </form>
  );
}

export function SupabaseSignInForms() {
  const [pwState, pwAction, pwPending] = useActionState(passwordSignInAction, {});
  const [linkState, linkAction, linkPending] = useActionState(magicLinkAction, {});
  return (
    <>
      <form action={pwAction} className="card" data-testid="password-sign-in">
        <h2>Sign in</h2>
        <label>
          Email
          <input name="email" type="email" required autoComplete="email" />
        </label>
        <label>
          Password
          <input name="password" type="password" required autoComplete="current-password" />
        </label>
        <button type="submit" disabled={pwPending}>{pwPending ? "Signing in…" : "Sign in"}</button>
        <Feedback state={pwState} />
      </form>
      <form action={linkAction} className="card" data-testid="magic-link-sign-in">
        <h2>Or get a magic link</h2>
        <label>
          Email
          <input name="email" type="email" required autoComplete="email" />
        </label>
        <button type="submit" disabled={linkPending}>{linkPending ? "Sending…" : "Email me a link"}</button>
        <Feedback state={linkState} />
      </form>
    </>
  );
}
