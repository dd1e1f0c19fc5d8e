// Server-side reads for the server components, with the signed-in user's own token: the progress
// function (not the database) decides what the user may see, exactly as for the browser.
import { type Progress, progressApi, readLibrary, userClient } from "../progressClient.ts";
import { supabaseConfig } from "./config.ts";

// A page render waits for these calls: a function that hangs must reach the error page in seconds
// (the library reads up to 25 pages), not after the browser client's 4 attempts of 20 s per page.
const SERVER_CALL = { timeoutMs: 4_000, retry: { attempts: 2 } };

function apiFor(accessToken: string) {
  const { supabaseUrl, anonKey } = supabaseConfig();
  return progressApi(
    userClient({ supabaseUrl, anonKey, accessToken: () => Promise.resolve(accessToken), server: true }),
    undefined,
    SERVER_CALL,
  );
}

export async function loadLibrary(accessToken: string): Promise<Progress[]> {
  return await readLibrary(apiFor(accessToken));
}

export async function loadSeries(accessToken: string, seriesId: string): Promise<Progress | null> {
  return await apiFor(accessToken).getProgress(seriesId);
}
