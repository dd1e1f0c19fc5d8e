// The browser tests on their own: starts a throwaway local stack (as `npm test` does), then runs
// `node tests/browser/run.mjs` against it and stops everything.
//
//   deno run -A tests/browser/standalone.ts [name filter] [--update-docs]

import { fileURLToPath } from "node:url";
import { runCleanups } from "../../local/stack/cleanup.ts";
import { startLocalStack } from "../../local/stack/stack.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
let code = 1;
try {
  const stack = await startLocalStack({ apiPort: 0, log: (line) => console.log(`[readsync] ${line}`) });
  const child = new Deno.Command("node", {
    args: [`${ROOT}tests/browser/run.mjs`, ...Deno.args],
    cwd: ROOT,
    env: {
      SUPABASE_URL: stack.apiUrl,
      SUPABASE_ANON_KEY: stack.anonKey,
      SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey,
      SUPABASE_DB_URL: stack.postgresJsDbUrl, // a URL postgres.js reads into the stack's connection
      SUPABASE_JWT_SECRET: stack.jwtSecret,
    },
    stdout: "inherit",
    stderr: "inherit",
  }).spawn();
  code = (await child.status).code;
} catch (error) {
  console.error(error instanceof Error ? error.stack ?? error.message : error);
} finally {
  await runCleanups();
}
Deno.exit(code);
