// The local API gateway: one HTTP port serving what `supabase start` serves on 54321 and we use:
//   /functions/v1/<name>       edge functions (local/functions)
//   /realtime/v1/websocket     Realtime broadcast (local/realtime)
//   /auth/v1/.well-known/jwks.json  the project's public signing keys, as Supabase Auth publishes them
//                              (SUPABASE_JWKS when set; else none: the local stack signs with the
//                              HS256 secret only), so functions verifying asymmetric tokens get 401
//                              for a foreign key instead of failing to load keys
// Anything else is a JSON 404, so a client pointed at the wrong path learns it at once: with PostgREST's
// error fields (code, message, details, hint; docs.postgrest.org, references/errors), which supabase-js's
// Data API client reads as its error and Auth's reads the message of, so `.from()`, `.rpc()` and
// `supabase.auth.*` against the local stack report why (the stack serves no Data API and no Auth).

import { createFunctionsGateway, type Service } from "../functions/gateway.ts";
import { createRealtimeEndpoint } from "../realtime/endpoint.ts";

export interface ApiContext {
  /** The port to listen on; 0: one the OS picks as the server binds it (see startApiServer). */
  port: number;
  dbUrl: string;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
  /**
   * How long close() lets requests still running finish (Deno.serve's graceful shutdown) before it
   * returns without them; 5 s unless given.
   */
  closeGraceMs?: number;
}

export interface ApiServer {
  url: string;
  /**
   * Closes Realtime and the functions, then the server: bounded by closeGraceMs, so one connection that
   * never finishes (a request body the client stopped sending half-way; Deno.serve's graceful shutdown
   * waits for it) cannot hold the stack's stop, and with it the test run's exit, for good.
   */
  close(): Promise<void>;
  /** The paths of the requests being handled now (a diagnostic: close() names them if it gives up). */
  pending(): string[];
}

function localJwks(): { keys: unknown[] } {
  try {
    const set = JSON.parse(Deno.env.get("SUPABASE_JWKS") ?? "");
    if (Array.isArray(set?.keys)) return { keys: set.keys };
  } catch { /* not set or not JSON */ }
  return { keys: [] };
}

/** The 404 of a path the local stack does not serve, with a hint for the two services people look for. */
function notServed(pathname: string): { code: string; message: string; details: null; hint: string | null } {
  const hint = /^\/rest\/v1(\/|$)/.test(pathname)
    ? "The local stack serves no Data API: readsync's clients use the progress function and Realtime " +
      "(README, Two commands); run `supabase start` for PostgREST"
    : /^\/auth\/v1(\/|$)/.test(pathname)
    ? "The local stack serves no Auth: use a token from local/stack/keys.ts (npm start prints a demo user's)"
    : null;
  return { code: "not_found", message: `No local service at ${pathname}`, details: null, hint };
}

/**
 * Listens first, then makes the functions and Realtime for the URL it listens on (the functions read it
 * as SUPABASE_URL); a request that comes before they are made waits for them. With port 0 the OS picks
 * the port as the server binds it, so no other process can take it between a pick and the bind (as
 * several test runs starting stacks at once on one machine did with a port picked and then released).
 */
export async function startApiServer(ctx: ApiContext): Promise<ApiServer> {
  const services = Promise.withResolvers<{ functions: Service; realtime: Service }>();
  const running = new Map<Request, string>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: ctx.port, onListen: () => {} },
    async (req, info) => {
      const { pathname } = new URL(req.url);
      running.set(req, `${req.method} ${pathname}`);
      try {
        if (pathname.startsWith("/functions/v1/")) {
          return await (await services.promise).functions.handle(req, info);
        }
        if (pathname.startsWith("/realtime/v1/")) {
          return await (await services.promise).realtime.handle(req, info);
        }
        if (pathname === "/auth/v1/.well-known/jwks.json") return Response.json(localJwks());
        return Response.json(notServed(pathname), { status: 404 });
      } finally {
        running.delete(req);
      }
    },
  );
  const port = server.addr.port;
  const url = `http://127.0.0.1:${port}`;
  let functions: Service;
  let realtime: Service;
  try {
    functions = await createFunctionsGateway({ ...ctx, port, apiUrl: url });
    try {
      realtime = await createRealtimeEndpoint({ ...ctx, port, apiUrl: url });
    } catch (error) {
      await functions.close();
      throw error;
    }
  } catch (error) {
    services.promise.catch(() => {}); // the requests that wait for them are answered 500
    services.reject(error);
    await server.shutdown();
    throw error;
  }
  services.resolve({ functions, realtime });
  return {
    url,
    close: async () => {
      await realtime.close();
      await functions.close();
      // shutdown() stops listening at once and then waits for every running handler to answer.
      const graceMs = ctx.closeGraceMs ?? 5_000;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const gaveUp = new Promise<true>((resolve) => timer = setTimeout(() => resolve(true), graceMs));
      const ended = await Promise.race([server.shutdown().then(() => false as const), gaveUp]);
      clearTimeout(timer);
      if (ended) {
        console.error(
          `local API server: stopped waiting for its connections after ${graceMs} ms, left to end with the ` +
            `process (${running.size} request(s) still being handled${
              running.size ? `: ${[...running.values()].join(", ")}` : ""
            })`,
        );
      }
    },
    pending: () => [...running.values()],
  };
}
