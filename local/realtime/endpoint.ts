// PLACEHOLDER until the Realtime endpoint lands: the contract used by local/api/server.ts.
import type { GatewayContext, Service } from "../functions/gateway.ts";
export function createRealtimeEndpoint(_ctx: GatewayContext): Promise<Service> {
  return Promise.resolve({
    handle: () => Response.json({ error: { code: "not_implemented", message: "realtime" } }, { status: 501 }),
    close: () => Promise.resolve(),
  });
}
