// Edge function "progress": the reading-progress API (routes and contracts: shared/progress/handler.ts).
//
// Shared code is imported through the "@shared/" entry of the root deno.json import map, which
// config.toml names as this function's import_map: `supabase functions deploy` resolves that entry
// to ./shared/ and bundles (Docker bundler) or uploads (--use-api) the files it reaches, whereas a
// bare relative import out of supabase/functions is not mounted into the Docker bundler.
import { createProgressHandlerFromEnv } from "@shared/progress/server.ts";

Deno.serve(createProgressHandlerFromEnv());
