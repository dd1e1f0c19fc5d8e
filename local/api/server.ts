// The local API gateway: one HTTP port serving what `supabase start` serves on 54321 and we use:
//   /functions/v1/<name>       edge functions (local/functions)
//   /realtime/v1/websocket     Realtime broadcast (local/realtime)
//   /auth/v1/.well-known/jwks.json  the project's public signing keys, as Supabase Auth publishes them
//                              (SUPABASE_JWKS when set; else none: the local stack signs with the
//                              HS256 secret only), so functions verifying asymmetric tokens get 401
//                              for a foreign key instead of failing to load keys
// Anything else is a JSON 404, so a client pointed at the wrong path learns it at once.

import { createFunctionsGateway } from "../functions/gateway.ts";
import { createRealtimeEndpoint } from "../realtime/endpoint.ts";

export interface ApiContext {
  port: number;
  dbUrl: string;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
}

export interface ApiServer {
  url: string;
  close(): Promise<void>;
}

function localJwks(): { keys: unknown[] } {
  try {
    const set = JSON.parse(Deno.env.get("SUPABASE_JWKS") ?? "");
    if (Array.isArray(set?.keys)) return { keys: set.keys };
  } catch { /* not set or not JSON */ }
  return { keys: [] };
}

export async function startApiServer(ctx: ApiContext): Promise<ApiServer> {
  const url = `http://127.0.0.1:${ctx.port}`;
  const functions = await createFunctionsGateway({ ...ctx, apiUrl: url });
  const realtime = await createRealtimeEndpoint({ ...ctx, apiUrl: url });
  const server = Deno.serve({ hostname: "127.0.0.1", port: ctx.port, onListen: () => {} }, (req, info) => {
    const { pathname } = new URL(req.url);
    if (pathname.startsWith("/functions/v1/")) return functions.handle(req, info);
    if (pathname.startsWith("/realtime/v1/")) return realtime.handle(req, info);
    if (pathname === "/auth/v1/.well-known/jwks.json") return Response.json(localJwks());
    return Response.json(
      { error: { code: "not_found", message: `No local service at ${pathname}` } },
      { status: 404 },
    );
  });
  return {
    url,
    close: async () => {
      await realtime.close();
      await functions.close();
      await server.shutdown();
    },
  };
}
