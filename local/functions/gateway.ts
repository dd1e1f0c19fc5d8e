// The local functions gateway: serves every supabase/functions/<name>/index.ts at
// /functions/v1/<name>/* on the local API port, the way `supabase start` / `supabase functions serve`
// do (their edge-runtime main service, supabase/cli internal/functions/serve/templates/main.ts):
//
// * Loading: each module is imported once, in this process, with Deno.serve temporarily replaced by
//   a stand-in that captures the handler instead of opening a port. A module that fails to load
//   answers 503 {"code":"BOOT_ERROR"} like a worker that fails to boot.
// * Environment: SUPABASE_URL, SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY, SUPABASE_DB_URL and
//   SUPABASE_JWT_SECRET are set in this process's environment before the modules load (functions
//   share this process, so they share its environment; close() restores the previous values).
//   SUPABASE_DB_URL is ctx.functionsDbUrl: the API server's URL for the stack's connection (decided as psql
//   connects: its password, TLS, host or socket), written as a URL postgres.js reads the same way
//   (postgresJsUrl), or a loopback relay's where no URL can say it to postgres.js (a socket directory, an
//   IPv6 host, certificates), which the API server closes once its last request has been answered: a
//   function hands the URL to postgres.js, as the progress function does, which reads no password file and
//   no PGSSLMODE and sends libpq's own parameters to the server as settings. What Supabase injects into a
//   hosted function (a plain URL with its password) is read there as before: shared/ is unchanged.
// * JWT: when verify_jwt is true for the function in config.toml (the default), every request but
//   OPTIONS needs `Authorization: Bearer <JWT>` valid for the project: HS256 with the JWT secret, or
//   ES256/RS256 with the JWKS in SUPABASE_JWKS. Otherwise 401 with Supabase's body,
//   {"msg":"Invalid JWT"} or {"msg":"Error: Missing authorization header"}. Any role passes (the anon
//   key too); what a role may do is the function's business. The `apikey` is not read: no Kong in front
//   of functions has key-auth (supabase/cli internal/start/templates/kong.yml has none on any route;
//   supabase/supabase docker/volumes/api/kong.yml none on functions-v1).
// * Path: the function sees the request URL with /functions/v1 removed, i.e. /<name>/<rest>?<query>,
//   as on Supabase (where routers use basePath("/<name>")). Method, headers and body pass unchanged
//   (but for what fetch's Request does to a method: "get" becomes GET, TRACE and TRACK are answered 405).
// * Abort signal: the function's Request carries the client's, so it aborts when the client leaves before its
//   answer, as Deno.serve's does (deno.json turns Deno.serve's legacy abort mode off: the signal does not
//   also abort after an answer was delivered). Here the local stack is more eager than Supabase's edge
//   runtime, whose request signal, as far as its source shows, aborts only when writing the answer fails
//   (README, "A client that leaves"): a function must not need the abort to be correct. close() aborts it
//   too, for every request still in a function: a function that stops on its signal (the progress function
//   cancels its database call: a 503 with Retry-After, unless its last statement had answered) answers at
//   once, so the API server's shutdown is not held for the length of a database wait (the 8 s statement
//   timeout, above its 5 s grace).
// * Unknown or disabled function: 404 "Function not found" (text/plain). A function that throws:
//   500 {"code":"Internal Server Error","message":"Request failed due to an internal server error"}.

import { fileURLToPath, pathToFileURL } from "node:url";
import { createLocalJWKSet, decodeProtectedHeader, type JSONWebKeySet, jwtVerify } from "jose";
import { type FunctionConfig, loadFunctionConfigs } from "./config.ts";
import { type DatabaseConnection, postgresJsUrl } from "../stack/database.ts";

export interface GatewayContext {
  port: number;
  apiUrl: string;
  dbUrl: string;
  /** The connection to dbUrl as psql makes it (databaseConnection). */
  db?: DatabaseConnection;
  /**
   * What the functions are given as SUPABASE_DB_URL: a URL postgres.js reads into `db`'s connection
   * (openPostgresJsUrl: startApiServer's, kept open until its last request has been answered); without it,
   * postgresJsUrl of `db` where one can say it, else dbUrl itself.
   */
  functionsDbUrl?: string;
  jwtSecret: string;
  anonKey: string;
  serviceRoleKey: string;
}

export interface Service {
  handle(req: Request, info: Deno.ServeHandlerInfo): Response | Promise<Response>;
  close(): Promise<void>;
}

export interface FunctionsGateway extends Service {
  /**
   * Whether `pathname` names a function the gateway serves and that loaded (not its own 404: unknown or
   * disabled, nor its 503: a boot error), so that a function is there to answer a preflight (the API
   * server lets Kong's cors plugin answer it otherwise, as on `supabase start`, where Kong answers every
   * preflight on the functions route before the edge runtime is asked).
   */
  servesFunction(pathname: string): boolean;
}

export interface FunctionsGatewayOptions {
  /** The supabase/ directory (default: the repository's). */
  supabaseDir?: string;
}

type ServeHandler = (req: Request, info: Deno.ServeHandlerInfo) => Response | Promise<Response>;

const SUPABASE_DIR = fileURLToPath(new URL("../../supabase", import.meta.url));

// A module evaluates once per process, so its captured handler is kept per entrypoint.
const handlers = new Map<string, Promise<ServeHandler>>();
// Deno.serve is process-global: load one module at a time.
let loading: Promise<unknown> = Promise.resolve();

function fakeServer(): Deno.HttpServer<Deno.NetAddr> {
  let resolveFinished!: () => void;
  const finished = new Promise<void>((r) => (resolveFinished = r));
  return {
    addr: { transport: "tcp", hostname: "127.0.0.1", port: 0 },
    finished,
    ref() {},
    unref() {},
    shutdown() {
      resolveFinished();
      return finished;
    },
    [Symbol.asyncDispose]() {
      resolveFinished();
      return finished;
    },
  } as Deno.HttpServer<Deno.NetAddr>;
}

function captureHandler(entrypoint: string): Promise<ServeHandler> {
  const cached = handlers.get(entrypoint);
  if (cached) return cached;
  const result = loading.then(async () => {
    const original = Deno.serve;
    let captured: ServeHandler | null = null;
    const standIn = (...args: unknown[]) => {
      // Deno.serve(handler) | Deno.serve(options, handler) | Deno.serve({ ...options, handler })
      const handler = typeof args[0] === "function"
        ? args[0]
        : typeof args[1] === "function"
        ? args[1]
        : (args[0] as { handler?: unknown } | undefined)?.handler;
      if (typeof handler !== "function") throw new TypeError("Deno.serve was called without a handler");
      if (captured) throw new Error(`${entrypoint} called Deno.serve more than once`);
      captured = handler as ServeHandler;
      return fakeServer();
    };
    Deno.serve = standIn as typeof Deno.serve;
    try {
      await import(pathToFileURL(entrypoint).href);
    } finally {
      Deno.serve = original;
    }
    if (!captured) throw new Error(`${entrypoint} did not call Deno.serve while loading`);
    return captured as ServeHandler;
  });
  loading = result.catch(() => {});
  handlers.set(entrypoint, result);
  return result;
}

function json(body: unknown, status: number): Response {
  return new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });
}

export async function createFunctionsGateway(
  ctx: GatewayContext,
  options: FunctionsGatewayOptions = {},
): Promise<FunctionsGateway> {
  const supabaseDir = options.supabaseDir ?? SUPABASE_DIR;
  const env: Record<string, string> = {
    SUPABASE_URL: ctx.apiUrl,
    SUPABASE_ANON_KEY: ctx.anonKey,
    SUPABASE_SERVICE_ROLE_KEY: ctx.serviceRoleKey,
    SUPABASE_DB_URL: ctx.functionsDbUrl ?? (ctx.db && postgresJsUrl(ctx.db)) ?? ctx.dbUrl,
    SUPABASE_JWT_SECRET: ctx.jwtSecret,
  };
  const previous = new Map<string, string | undefined>();
  for (const [k, v] of Object.entries(env)) {
    previous.set(k, Deno.env.get(k));
    Deno.env.set(k, v);
  }

  const configs = await loadFunctionConfigs(supabaseDir);
  const functions = new Map<string, { config: FunctionConfig; handler: Promise<ServeHandler> }>();
  for (const config of configs) {
    if (!config.enabled) continue;
    const handler = captureHandler(config.entrypoint);
    handler.catch((error) => {
      console.error(JSON.stringify({
        ts: new Date().toISOString(),
        level: "error",
        component: "functions-gateway",
        event: "boot_error",
        function: config.name,
        error: error instanceof Error ? error.stack ?? error.message : String(error),
      }));
    });
    functions.set(config.name, { config, handler });
  }
  // Load everything now, so the first request does not pay for it (failures answer 503 later).
  const loaded = await Promise.allSettled([...functions.values()].map((f) => f.handler));
  // The functions that loaded: those there to answer a request, a preflight included (servesFunction).
  const booted = new Set([...functions.keys()].filter((_, i) => loaded[i].status === "fulfilled"));

  // Aborted by close(): what each forwarded request's signal follows beside the client's.
  const closing = new AbortController();

  const secretKey = new TextEncoder().encode(ctx.jwtSecret);
  const jwksText = Deno.env.get("SUPABASE_JWKS");
  let jwks: ReturnType<typeof createLocalJWKSet> | null = null;
  try {
    if (jwksText) jwks = createLocalJWKSet(JSON.parse(jwksText) as JSONWebKeySet);
  } catch { /* no usable JWKS: asymmetric tokens fail */ }

  async function isValidJwt(token: string): Promise<boolean> {
    try {
      const { alg } = decodeProtectedHeader(token);
      if (alg === "HS256") {
        await jwtVerify(token, secretKey, { algorithms: ["HS256"] });
        return true;
      }
      if ((alg === "ES256" || alg === "RS256") && jwks) {
        await jwtVerify(token, jwks, { algorithms: [alg] });
        return true;
      }
      return false;
    } catch {
      return false;
    }
  }

  /**
   * The function `pathname` names (`/functions/v1/<name>/<rest>`), if the gateway serves it: its name as
   * written there, not decoded again, as the edge runtime's main service reads it (`pathname.split("/")[1]`,
   * supabase/cli internal/functions/serve/templates/main.ts). The API server hands over the path Kong hands
   * the edge runtime, already decoded but for reserved characters (local/api/kongRouter.ts): `%70rogress`
   * arrives as `progress`, and `progress%2F..%2Fother` stays one segment, a name no function has.
   */
  function functionAt(pathname: string) {
    const match = /^\/functions\/v1\/([^/]+)(\/.*)?$/.exec(pathname);
    const fn = match ? functions.get(match[1]) : undefined;
    return match && fn ? { match, fn } : null;
  }

  async function handle(req: Request, info: Deno.ServeHandlerInfo): Promise<Response> {
    const url = new URL(req.url);
    const { match, fn } = functionAt(url.pathname) ?? {};
    if (!match || !fn) {
      return new Response("Function not found", { status: 404, headers: { "content-type": "text/plain" } });
    }

    if (req.method !== "OPTIONS" && fn.config.verifyJwt) {
      const header = req.headers.get("authorization");
      if (!header) return json({ msg: "Error: Missing authorization header" }, 401);
      const [scheme, token] = header.split(" ");
      if (scheme !== "Bearer") return json({ msg: "Error: Auth header is not 'Bearer {token}'" }, 401);
      if (!token || !(await isValidJwt(token))) return json({ msg: "Invalid JWT" }, 401);
    }

    let handler: ServeHandler;
    try {
      handler = await fn.handler;
    } catch {
      return json({ code: "BOOT_ERROR", message: "Worker failed to boot (please check logs)" }, 503);
    }

    const target = new URL(`/${match[1]}${match[2] ?? ""}${url.search}`, url.origin);
    // fetch's Request upper-cases get, head, post, put, delete and options (so a "get" carries no body)
    // and refuses TRACE and TRACK: those are answered 405 here instead of failing as a 500.
    const upper = req.method.toUpperCase();
    const hasBody = upper !== "GET" && upper !== "HEAD";
    let forwarded: Request;
    try {
      forwarded = new Request(target, {
        method: req.method,
        headers: req.headers,
        body: hasBody ? req.body : null,
        signal: AbortSignal.any([req.signal, closing.signal]),
      });
    } catch (error) {
      if (!(error instanceof TypeError)) throw error;
      return json(
        { code: "Method Not Allowed", message: `${req.method} cannot be forwarded to a function` },
        405,
      );
    }
    try {
      const res = await handler(forwarded, info);
      if (!(res instanceof Response)) throw new TypeError("the function did not return a Response");
      return res;
    } catch (error) {
      console.error(JSON.stringify({
        ts: new Date().toISOString(),
        level: "error",
        component: "functions-gateway",
        event: "function_error",
        function: match[1],
        error: error instanceof Error ? error.stack ?? error.message : String(error),
      }));
      return json({
        code: "Internal Server Error",
        message: "Request failed due to an internal server error",
      }, 500);
    }
  }

  return {
    handle,
    servesFunction: (pathname) => {
      const at = functionAt(pathname);
      return at !== null && booted.has(at.match[1]);
    },
    close: () => {
      closing.abort(new Error("the local functions gateway is closing"));
      for (const [k, v] of previous) {
        if (v === undefined) Deno.env.delete(k);
        else Deno.env.set(k, v);
      }
      return Promise.resolve();
    },
  };
}
