// Server-side reads for the server components, with the signed-in user's own token: the progress
// function (not the database) decides what the user may see, exactly as for the browser.
import { createProgressClient, type Progress } from "../progressClient.ts";
import { supabaseConfig } from "./config.ts";

function clientFor(accessToken: string) {
  const { supabaseUrl, anonKey } = supabaseConfig();
  return createProgressClient({ supabaseUrl, anonKey, accessToken: () => accessToken, cache: "no-store" });
}

export async function loadLibrary(accessToken: string): Promise<Progress[]> {
  return await clientFor(accessToken).listProgress();
}

export async function loadSeries(accessToken: string, seriesId: string): Promise<Progress | null> {
  return await clientFor(accessToken).getProgress(seriesId);
}
