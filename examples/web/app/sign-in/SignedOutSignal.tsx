"use client";

import { useEffect } from "react";
import { announceSession } from "@/lib/client/sessionSignal.ts";

/** The sign-in page renders only without a session: other open tabs of this browser must leave. */
export function SignedOutSignal() {
  useEffect(() => announceSession(null), []);
  return null;
}
