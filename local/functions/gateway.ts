// PLACEHOLDER until the progress API lands: the functions gateway contract used by local/api/server.ts.
export interface GatewayContext {
  port: number;
  apiUrl: string;
  dbUrl: string;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
}
export interface Service {
  handle(req: Request, info: Deno.ServeHandlerInfo): Response | Promise<Response>;
  close(): Promise<void>;
}
export function createFunctionsGateway(_ctx: GatewayContext): Promise<Service> {
  return Promise.resolve({
    handle: () => Response.json({ error: { code: "not_implemented", message: "functions gateway" } }, { status: 501 }),
    close: () => Promise.resolve(),
  });
}
