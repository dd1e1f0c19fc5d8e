// Server-side reads for the server components, with the signed-in user's own token: the progress
// function (not the database) decides what the user may see, exactly as for the browser.
import { type Progress, progressApi, readLibrary, userClient } from "../progressClient.ts";
import { supabaseConfig } from "./config.ts";

function apiFor(accessToken: string) {
  const { supabaseUrl, anonKey } = supabaseConfig();
  return progressApi(userClient({ supabaseUrl, anonKey, accessToken: () => Promise.resolve(accessToken), server: true }));
}

export async function loadLibrary(accessToken: string): Promise<Progress[]> {
  return await readLibrary(apiFor(accessToken));
}

export async function loadSeries(accessToken: string, seriesId: string): Promise<Progress | null> {
  return await apiFor(accessToken).getProgress(seriesId);
}
