// Prepares a database for readsync: the local platform bootstrap (only where the database is not
// already a Supabase one), then our migrations, applied by the real Supabase CLI.

import { userInfo } from "node:os";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { onCleanup } from "./cleanup.ts";
import { exists, findPostgresBinaries } from "./system.ts";

// The checkout's path itself (fileURLToPath, with a trailing slash): a URL's pathname keeps it
// percent-encoded ("my books" as "my%20books", a non-ASCII letter as its UTF-8 bytes), a path no file has.
const ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const BOOTSTRAP_SQL = `${ROOT}local/platform/bootstrap.sql`;

/**
 * The directories Node's module resolution searches from `dir`, nearest first (its NODE_MODULES_PATHS):
 * `node_modules` of `dir` and of each of its parents up to the root, none inside a `node_modules` of its own
 * (an npm workspace's packages are hoisted into the monorepo's, a project inside one finds them there).
 */
export function nodeModulesPaths(dir: string): string[] {
  const parts = dir.replace(/\/+$/, "").split("/");
  const paths: string[] = [];
  for (let i = parts.length - 1; i >= 0; i--) {
    if (parts[i] === "node_modules") continue;
    paths.push(`${parts.slice(0, i + 1).join("/")}/node_modules`);
  }
  return paths;
}

/**
 * The node_modules directory that holds the `supabase` npm package, as the project at `root` resolves it
 * (its own, else a parent directory's); null when none does.
 */
function supabaseModulesDir(root: string): string | null {
  return nodeModulesPaths(root).find((modules) => exists(`${modules}/supabase/package.json`)) ?? null;
}

/**
 * The npm package's launcher (`node_modules/.bin/supabase`, a node script that runs the CLI's binary: see
 * supabaseCliBinary) where the project at `root` finds it, in its own node_modules or a parent's.
 */
export function supabaseLauncher(root = ROOT): string {
  const modules = supabaseModulesDir(root) ?? nodeModulesPaths(root)[0];
  return `${modules}/.bin/supabase`;
}

/**
 * The Supabase CLI's own binary, as its npm launcher (supabase/dist/supabase.js) finds it:
 * SUPABASE_CLI_BINARY_OVERRIDE when set, else `bin/supabase` of the first of this platform's packages
 * (@supabase/cli-<os>-<cpu>, then the -musl one on Linux) that node resolves from that script: in each of
 * nodeModulesPaths of its directory, the `supabase` package's own node_modules first, then its parents'
 * (a monorepo's, where npm workspaces hoist both packages). The launcher is the one the project at `root`
 * resolves, in its own node_modules or a parent's. Null when none is: the launcher then runs and says what
 * is missing in its own words.
 */
export function supabaseCliBinary(root = ROOT): string | null {
  const override = Deno.env.get("SUPABASE_CLI_BINARY_OVERRIDE");
  if (override) return override;
  const os =
    ({ linux: "linux", darwin: "darwin", windows: "windows" } as Record<string, string>)[Deno.build.os];
  const cpu = ({ x86_64: "x64", aarch64: "arm64" } as Record<string, string>)[Deno.build.arch];
  if (!os || !cpu) return null;
  const suffixes = os === "linux" ? [`linux-${cpu}`, `linux-${cpu}-musl`] : [`${os}-${cpu}`];
  const ext = os === "windows" ? ".exe" : "";
  // Node resolves from the launcher script's real path (a symlinked package, as pnpm links them, resolves
  // from where it is); without the launcher, from the project, as it would resolve the package itself.
  const launcherModules = supabaseModulesDir(root);
  const from = launcherModules ? `${Deno.realPathSync(`${launcherModules}/supabase`)}/dist` : root;
  for (const suffix of suffixes) {
    for (const modules of nodeModulesPaths(from)) {
      const pkg = `${modules}/@supabase/cli-${suffix}`;
      if (exists(`${pkg}/package.json`)) return `${pkg}/bin/supabase${ext}`;
    }
  }
  return null;
}

/**
 * Runs a child to its end and returns its exit status and output. It is registered with the exit cleanups
 * (cleanup.ts) while it runs, in a process group of its own that the cleanup kills whole (and waits for):
 * a stop that comes meanwhile (SIGTERM, SIGHUP, a parent gone: what reaches this process alone, not the
 * child) ends it before the cluster it talks to is torn down, instead of the stopped process exiting with
 * the child still running (a psql or a CLI waiting on a database that is gone, or on one that never answers).
 */
async function runRegistered(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ success: boolean; stdout: string; stderr: string }> {
  const child = new Deno.Command(cmd, {
    args,
    cwd: options.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: options.env,
    detached: true,
  }).spawn();
  const forget = onCleanup(async () => {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch { /* the group is gone */ }
    await child.status;
  });
  try {
    const out = await child.output();
    const decoder = new TextDecoder();
    return { success: out.success, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
  } finally {
    forget();
  }
}

export function psqlPath(): string {
  const bins = findPostgresBinaries();
  return bins ? `${bins.binDir}/psql` : "psql";
}

/**
 * Runs SQL through psql (stops on the first error) and returns its stdout. Registered with the exit
 * cleanups while it runs, as the CLI is (runRegistered): a stop during the stack's bootstrap ends it.
 * Without stdin or a terminal of its own (the process group) psql cannot ask for a password, and is told
 * not to try (-w): a server that wants one and a URL without it fail saying where the password goes
 * (passwordMissing), instead of psql's prompt read from nothing and its bare error; a password the server
 * refuses fails saying which one psql sent, and from where (passwordRefused).
 */
export async function psql(dbUrl: string, args: string[]): Promise<string> {
  const out = await runRegistered(psqlPath(), [
    "-X",
    "-w",
    "-q",
    "-v",
    "ON_ERROR_STOP=1",
    "-d",
    dbUrl,
    ...args,
  ]);
  if (!out.success) {
    if (/no password supplied/.test(out.stderr)) throw new Error(passwordMissing(dbUrl, "psql", out.stderr));
    if (/password authentication failed/.test(out.stderr)) {
      throw new Error(passwordRefused(dbUrl, "psql", out.stderr));
    }
    throw new Error(`psql failed:\n${out.stderr}${out.stdout}`);
  }
  return out.stdout;
}

/** The URL's host and user, as the errors below name them. */
function databaseAt(dbUrl: string): string {
  try {
    const url = new URL(dbUrl);
    return `the database at ${url.host} (user ${decodeURIComponent(url.username) || "(none)"})`;
  } catch {
    return "the database"; // a connection string that is no URL
  }
}

/** What to do when the server asks for a password that neither the URL nor the environment gives. */
function passwordMissing(dbUrl: string, client: string, said: string): string {
  return `${databaseAt(dbUrl)} asks for a password and its URL (SUPABASE_DB_URL) has none: put the ` +
    `password in the URL (postgresql://<user>:<password>@<host>:<port>/<database>, special characters ` +
    `percent-encoded), set PGPASSWORD, or give it a line in ${passwordFileName()} (mode 0600) (psql runs ` +
    `without a terminal to ask for it on). ${client} said: ${said.trim()}`;
}

/** What to do when the server refuses the password sent: which one it was, and where it came from. */
function passwordRefused(dbUrl: string, client: string, said: string): string {
  const source = passwordSource(dbUrl);
  const which = source === "url"
    ? "the password in its URL (SUPABASE_DB_URL; special characters percent-encoded)"
    : source === "PGPASSWORD"
    ? "the password in PGPASSWORD (its URL has none)"
    : source
    ? `the password its line in ${source.file} gives (its URL has none, and PGPASSWORD is not set)`
    : `the password ${client} sent`;
  return `${databaseAt(dbUrl)} refused ${which}: correct it there. ${client} said: ${said.trim()}`;
}

/**
 * Where a client that reads what libpq reads (psql; the CLI's pgx) takes the password for `dbUrl` from, in
 * libpq's order: the URL's, else PGPASSWORD, else the password file's line that matches; null when none
 * gives one.
 */
function passwordSource(dbUrl: string): "url" | "PGPASSWORD" | { file: string; password: string } | null {
  let url: URL;
  try {
    url = new URL(dbUrl);
  } catch {
    return null;
  }
  if (url.password) return "url";
  if (Deno.env.get("PGPASSWORD")) return "PGPASSWORD";
  return passwordFromFile(url);
}

/** The password file libpq reads: PGPASSFILE, else (unset or empty, as libpq and pgx take it) ~/.pgpass. */
function passwordFileName(): string {
  return Deno.env.get("PGPASSFILE") || `${Deno.env.get("HOME") || "~"}/.pgpass`;
}

/**
 * The directory libpq looks for a server's socket in when it is given no host: the one the Debian and Ubuntu
 * packages (whose psql findPostgresBinaries finds) are built with. The password file matches it as
 * `localhost`, as it does no host at all.
 */
const DEFAULT_SOCKET_DIR = "/var/run/postgresql";

/** Where a connection to a URL goes and as whom, as libpq takes each from it and the environment. */
export interface LibpqTarget {
  /** A host name or address, or a socket directory (an absolute path); "" when none is given. */
  host: string;
  port: string;
  database: string;
  user: string;
}

/**
 * The host, port, database and user libpq connects to and as for `url`: each from the URL's query parameter
 * (`?host=`, `?port=`, `?dbname=`, `?user=`, which take precedence over the URL's own parts), else the URL's
 * part (percent-decoded: a socket directory is written `%2Fvar%2Frun%2Fpostgresql`), else its environment
 * variable (PGHOST, PGPORT, PGDATABASE, PGUSER), else libpq's default: no host (the default socket
 * directory), port 5432, the user's name as the database, the effective OS user's name as the user (what
 * libpq and postgres.js take: not $USER, which a shell may carry over from another user, as `su` or sudo do).
 */
export function libpqTarget(url: URL): LibpqTarget {
  const param = (name: string) => url.searchParams.get(name) || "";
  const env = (name: string) => Deno.env.get(name) || "";
  const host = param("host") || decodeURIComponent(url.hostname).replace(/^\[(.*)\]$/, "$1") || env("PGHOST");
  const user = param("user") || decodeURIComponent(url.username) || env("PGUSER") || osUserName();
  return {
    host,
    port: param("port") || url.port || env("PGPORT") || "5432",
    database: param("dbname") || decodeURIComponent(url.pathname.slice(1)) || env("PGDATABASE") || user,
    user,
  };
}

/** The effective OS user's name, as libpq takes it (getpwuid of geteuid); "" when there is none. */
function osUserName(): string {
  try {
    return userInfo().username;
  } catch {
    return "";
  }
}

/**
 * The password libpq would take for `url` from its password file (PGPASSFILE, else ~/.pgpass) and that
 * file, or null, by libpq's rules ("The Password File", and its passwordFromFile): the first line
 * `host:port:database:user:password` whose first four fields match the connection's (libpqTarget; each
 * `*` for any; `\` escapes a `:` or `\`; `#` starts a comment line), the host `localhost` where there is
 * none or it is the default socket directory. That line's password; none when its password field is empty
 * (libpq then sends none: "no password supplied"), and none when the connection has no database or user.
 * A file that is not a plain file, or that its group or others may read or write, is not read (libpq
 * ignores it, saying so).
 */
export function passwordFromFile(url: URL): { file: string; password: string } | null {
  const file = passwordFileName();
  let text: string;
  try {
    const info = Deno.statSync(file);
    if (!info.isFile || (Deno.build.os !== "windows" && ((info.mode ?? 0) & 0o077) !== 0)) return null;
    text = Deno.readTextFileSync(file);
  } catch {
    return null;
  }
  const target = libpqTarget(url);
  if (target.database === "" || target.user === "") return null;
  const host = target.host === "" || target.host === DEFAULT_SOCKET_DIR ? "localhost" : target.host;
  const wanted = [host, target.port, target.database, target.user];
  for (const line of text.split(/\r?\n/)) {
    if (line === "" || line.startsWith("#")) continue;
    // Its fields, unescaped; `*` (unescaped) matches anything.
    const fields: { value: string; any: boolean }[] = [];
    let value = "";
    let raw = "";
    for (let i = 0; i < line.length; i++) {
      if (line[i] === "\\" && i + 1 < line.length) {
        value += line[i + 1];
        raw += line[i] + line[++i];
      } else if (line[i] === ":") {
        fields.push({ value, any: raw === "*" });
        value = raw = "";
      } else {
        value += line[i];
        raw += line[i];
      }
    }
    fields.push({ value, any: raw === "*" });
    if (fields.length < 5) continue;
    if (wanted.every((want, i) => fields[i].any || fields[i].value === want)) {
      return fields[4].value === "" ? null : { file, password: fields[4].value };
    }
  }
  return null;
}

export async function isSupabaseDatabase(dbUrl: string): Promise<boolean> {
  const out = await psql(dbUrl, [
    "-At",
    "-c",
    "select to_regprocedure('auth.uid()') is not null and to_regclass('realtime.messages') is not null",
  ]);
  return out.trim() === "t";
}

/** What bootstrap.sql prints when, under its lock, it finds the database bootstrapped already. */
const BOOTSTRAP_FOUND_APPLIED = "readsync: platform bootstrap already applied";

/**
 * The platform surface (roles, auth, realtime) a plain PostgreSQL lacks; never touches Supabase. Resolves
 * whether it applied it (false: the database had it). In one transaction: a psql ended part-way (a stop
 * kills it, psql() says why; or a statement that fails) leaves none of it, instead of a database with
 * auth.uid() and realtime.messages but not what follows them, which every later start would take for a
 * bootstrapped one (isSupabaseDatabase) and never complete. Serialized in the database: bootstrap.sql first
 * takes a transaction-level advisory lock and looks again under it, so that of two first starts at once
 * (both found the database without it) one applies it and the other, once that one has committed, finds
 * it applied and changes nothing, instead of both running it (one failing on what the other created).
 * `onFoundWithout` runs once the database was found without it, before the bootstrap (tests hold two
 * starts there).
 */
export async function applyBootstrapIfNeeded(
  dbUrl: string,
  options: { onFoundWithout?: () => Promise<void> | void } = {},
): Promise<boolean> {
  if (await isSupabaseDatabase(dbUrl)) return false;
  await options.onFoundWithout?.();
  const out = await psql(dbUrl, ["-1", "-f", BOOTSTRAP_SQL]);
  return !out.includes(BOOTSTRAP_FOUND_APPLIED);
}

/** The sslmode values libpq takes. */
const SSL_MODES = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] as const;
type SslMode = (typeof SSL_MODES)[number];

/**
 * The sslmode libpq connects to `url` with: the URL's `sslmode`, else PGSSLMODE (psql reads it, and so does
 * the CLI's pgx; postgres.js does not), else libpq's default, `prefer`. One libpq does not know is refused,
 * as psql refuses it.
 */
export function sslModeFor(url: URL): SslMode {
  const mode = url.searchParams.get("sslmode") || Deno.env.get("PGSSLMODE") || "prefer";
  if (!(SSL_MODES as readonly string[]).includes(mode)) {
    throw new Error(`invalid sslmode value: "${mode}" (libpq takes ${SSL_MODES.join(", ")})`);
  }
  return mode as SslMode;
}

/**
 * The URL the Supabase CLI is given, for a connection that used TLS (`tls`) or not, as one made as psql
 * makes it did (firstQueryAsPsql). Where its sslmode (the URL's, else PGSSLMODE's, else none: sslModeFor)
 * lets libpq choose, `prefer` (try TLS, fall back to a connection without it) or `allow` (the other way
 * round), the CLI is told what that connection came to: `require` when it used TLS, `disable` when it did
 * not. The CLI has no fallback of its own: given a URL that asks for TLS (`prefer`, or no sslmode), its
 * connect drops pgx's fallback to a connection without it ("No fallback from TLS to unsecure connection",
 * internal/utils/connect.go), so that a server without TLS (the stack's own cluster) or one whose
 * pg_hba.conf refuses it failed the push where psql connected; and `allow` (pgx: without TLS first, then
 * with it) would make its choice again. An sslmode that leaves no choice (disable, require, verify-ca,
 * verify-full) is the CLI's as the URL or PGSSLMODE gives it (PGSSLMODE's written into the URL).
 */
export function cliDbUrl(dbUrl: string, tls: boolean): string {
  const url = new URL(dbUrl);
  const mode = sslModeFor(url);
  if (mode === "prefer" || mode === "allow") url.searchParams.set("sslmode", tls ? "require" : "disable");
  else url.searchParams.set("sslmode", mode);
  // A socket directory written %2F-encoded as the URL's host (libpq decodes it) the CLI's pgx takes for a
  // host name to resolve: it is given as ?host= instead, the URL's port, user and password as parameters
  // too (a URL with a user needs a host), each unless a parameter gives it already (libpq's takes precedence).
  const host = decodeURIComponent(url.hostname);
  if (!host.startsWith("/")) return url.toString();
  const params = new URLSearchParams(url.search);
  const parts = { host, port: url.port, user: url.username, password: url.password };
  for (const [name, value] of Object.entries(parts)) {
    if (value && !params.has(name)) params.set(name, decodeURIComponent(value));
  }
  return `${url.protocol}//${url.pathname}?${params}`;
}

/** The query parameters that libpqTarget and sslModeFor read, not postgres.js's (it sends others on). */
const LIBPQ_TARGET_PARAMETERS = ["host", "port", "dbname", "user", "sslmode"];

/**
 * postgres.js's options for a connection to `dbUrl` as psql makes it: to the host, port and database and as
 * the user libpq takes (libpqTarget: postgres.js sends a `?host=` on to the server as a setting, does not
 * decode a %2F-encoded socket directory, and connects to localhost over TCP where libpq, given no host, takes
 * its default socket directory); the password of the password file (PGPASSFILE, else ~/.pgpass) when
 * neither the URL nor PGPASSWORD gives one, as libpq and the CLI's pgx read it (postgres.js does not: a
 * password kept there bootstrapped, then failed the push's lock). Its TLS is each attempt's
 * (firstQueryAsPsql). `url` is `dbUrl` without the parameters these replace.
 */
function connectionOptions(dbUrl: string): {
  url: string;
  options: { host: string; port: number; database: string; username: string; pass?: string };
  target: LibpqTarget;
} {
  const url = new URL(dbUrl);
  const target = libpqTarget(url);
  const source = passwordSource(dbUrl);
  for (const name of LIBPQ_TARGET_PARAMETERS) url.searchParams.delete(name);
  return {
    url: url.toString(),
    options: {
      host: target.host || DEFAULT_SOCKET_DIR,
      port: Number(target.port),
      database: target.database,
      username: target.user,
      ...(typeof source === "object" && source !== null ? { pass: source.password } : {}),
    },
    target,
  };
}

/** SSLRequest: the message a client sends first to ask the server for TLS (answered 'S' or 'N'). */
const SSL_REQUEST = new Uint8Array([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/**
 * Whether the server at `host`:`port` offers TLS: what it answers an SSLRequest ('S' or not), on a
 * connection of its own (closed after). Undefined when it cannot be asked (no connection, or no answer
 * within 10 s): the connection's own attempt then says what is wrong, instead of a server that cannot be
 * reached said to take no TLS.
 */
async function serverOffersTls(host: string, port: number): Promise<boolean | undefined> {
  let conn: Deno.Conn | undefined;
  let guard: ReturnType<typeof setTimeout> | undefined;
  // Set once the probe has answered: a connection completed after the guard gave up is closed at once (the
  // finally below ran before it existed).
  let over = false;
  try {
    const ask = (async () => {
      const opened = await Deno.connect({ hostname: host, port });
      if (over) {
        opened.close();
        return undefined;
      }
      conn = opened;
      await conn.write(SSL_REQUEST);
      const answer = new Uint8Array(1);
      return await conn.read(answer) === 1 ? answer[0] === 0x53 : undefined; // 'S'
    })();
    ask.catch(() => {});
    return await Promise.race([
      ask,
      new Promise<undefined>((resolve) => guard = setTimeout(resolve, 10_000, undefined)),
    ]);
  } catch {
    return undefined;
  } finally {
    over = true;
    clearTimeout(guard);
    try {
      conn?.close();
    } catch { /* closed */ }
  }
}

/** Whether a connection to `dbUrl` made as psql makes it (firstQueryAsPsql) uses TLS: what cliDbUrl is told. */
export async function connectionUsesTls(dbUrl: string): Promise<boolean> {
  const { sql, tls } = await firstQueryAsPsql(dbUrl, "select 1");
  await sql.end();
  return tls;
}

/**
 * `query` (simple: no prepared statement) run first on a connection to `dbUrl` made as psql makes it
 * (connectionOptions): the connection, which the caller ends, the query's results, and whether it uses TLS.
 * Its TLS as libpq's sslmode (sslModeFor) has it: `prefer` asks for it where the server offers it
 * (serverOffersTls) and, should the server refuse that connection (28000: its pg_hba.conf has no line for
 * it, as with hostnossl lines only), connects again without it; `allow` connects without it first, and
 * again with it on such a refusal; `disable` never asks for it, `require` and the verify modes always (the
 * latter verifying the certificate); over a socket directory, none (libpq uses none there). postgres.js has
 * no such fallback of its own (its `prefer` only takes what the server offers, and its `allow` asks for TLS
 * whether offered or not), and does not read PGSSLMODE. Its error, on a connection that failed, said as
 * psql's is (connectionError); the connection is ended then.
 */
async function firstQueryAsPsql(
  dbUrl: string,
  query: string,
): Promise<{ sql: postgres.Sql; results: postgres.RowList<postgres.Row[]>; tls: boolean }> {
  const { url, options, target } = connectionOptions(dbUrl);
  const mode = sslModeFor(new URL(dbUrl));
  // verify-ca: the certificate's chain checked, not its name (node's tls checks both unless told not to).
  type Ssl = false | "require" | "verify-full" | {
    rejectUnauthorized: true;
    checkServerIdentity: () => undefined;
  };
  let attempts: Ssl[];
  if (options.host.startsWith("/")) attempts = [false];
  else if (mode === "disable") attempts = [false];
  else if (mode === "allow") attempts = [false, "require"];
  else if (mode === "prefer") {
    attempts = (await serverOffersTls(options.host, options.port)) === true ? ["require", false] : [false];
  } else {
    // Only a server that answered no: one that could not be asked is tried, and its error said.
    if ((await serverOffersTls(options.host, options.port)) === false) {
      throw new Error(
        `${databaseAt(dbUrl)} does not take TLS connections, and its sslmode (${mode}) asks for one ` +
          `(server ${target.host || DEFAULT_SOCKET_DIR}:${target.port})`,
      );
    }
    attempts = [
      mode === "verify-ca" ? { rejectUnauthorized: true, checkServerIdentity: () => undefined } : mode,
    ];
  }
  for (let i = 0;; i++) {
    const ssl = attempts[i];
    // postgres.js splits each of a host string's comma-separated hosts at ':' (as host:port), which cut an
    // IPv6 address ("::1" became "", localhost); a list it takes as it is (its ports then a list too).
    const hosts = options.host.split(",");
    const tcp = options.host.startsWith("/") ? {} : {
      host: hosts as unknown as string,
      port: hosts.map(() => options.port) as unknown as number,
    };
    const sql = postgres(url, { max: 1, onnotice: () => {}, ...options, ...tcp, ssl });
    try {
      return { sql, results: await sql.unsafe(query), tls: ssl !== false };
    } catch (error) {
      await sql.end();
      if (i + 1 >= attempts.length || (error as { code?: string })?.code !== "28000") {
        throw connectionError(dbUrl, error);
      }
    }
  }
}

/** A connection's error, its password refused or missing said as psql's is (passwordRefused). */
function connectionError(dbUrl: string, error: unknown): unknown {
  // 28P01: invalid_password (also an empty one sent where the URL and the environment have none).
  if ((error as { code?: string })?.code !== "28P01") return error;
  const said = error instanceof Error ? error.message : String(error);
  return new Error(
    passwordSource(dbUrl) === null
      ? passwordMissing(dbUrl, "postgres.js", said)
      : passwordRefused(dbUrl, "postgres.js", said),
  );
}

/**
 * Runs the Supabase CLI to its end: its binary itself (supabaseCliBinary), not through the npm package's
 * node launcher, which only finds that binary and runs it (a node start more per run, ≈ 0.1–0.2 s of CPU
 * on this machine, and a process more to end); the launcher only when no binary is found. Registered with
 * the exit cleanups while it runs, in a process group of its own killed whole (runRegistered): a stop that
 * comes meanwhile (npm start's `supabase db push` as its stack starts) ends it before the cluster it writes
 * to is torn down.
 */
export async function supabaseCli(args: string[]): Promise<{ ok: boolean; output: string }> {
  const out = await runRegistered(supabaseCliBinary() ?? supabaseLauncher(), args, {
    cwd: ROOT,
    env: { SUPABASE_TELEMETRY_DISABLED: "1", DO_NOT_TRACK: "1" },
  });
  return { ok: out.success, output: (out.stdout + out.stderr).trim() };
}

/** The advisory lock (one bigint key) that one `supabase db push` at a time holds per database. */
const PUSH_LOCK = "hashtextextended('readsync: supabase db push', 0)";

/**
 * `supabase db push` against the database; throws with the CLI's own output on failure. One push at a time
 * per database: a transaction of its own holds an advisory lock while the CLI runs (released at its end,
 * or when this process's connection goes), so that of two first starts at once the second pushes once the
 * first has, and finds every migration applied, instead of both applying them at once (one failing on what
 * the other created, or on the other's row in supabase_migrations.schema_migrations). A transaction-level
 * lock, not a session's: through a transaction-mode pooler (Supavisor's port 6543) the transaction keeps
 * one server connection, where a session lock would stay on a pooled connection after this one closed.
 *
 * That transaction sits idle while the CLI runs, so it is begun read committed (it holds no snapshot: a
 * CREATE INDEX CONCURRENTLY in a migration waits for no transaction older than its own, where a server's
 * default_transaction_isolation repeatable read would make it wait for this one, which waits for the CLI)
 * and sets for itself no idle_in_transaction_session_timeout (a server's would end it, and the lock, half-way)
 * and no statement_timeout or lock_timeout (the wait for another start's push). It is run by hand, not by
 * sql.begin: the push is the CLI's, and is answered by the CLI alone. A lock connection that goes while the
 * CLI runs (terminated, a pooler's or the network's cut) only ends the serialization: sql.begin would reject
 * at once, while the CLI goes on (failing a push that succeeds, or a start torn down under its CLI).
 *
 * The lock's connection is made as psql makes it (firstQueryAsPsql: its host, user and password file as
 * libpq's, its TLS as the sslmode has it), and where the sslmode lets libpq choose, the CLI uses TLS when
 * that connection did (cliDbUrl). A password refused, or missing, is said as psql's is.
 */
export async function pushMigrations(dbUrl: string): Promise<string> {
  // One simple query (no prepared statement, as a pooler in transaction mode may not keep one); the CLI is
  // told to use TLS (cliDbUrl) as this connection did.
  const { sql, tls } = await firstQueryAsPsql(
    dbUrl,
    "begin isolation level read committed; " +
      "set local idle_in_transaction_session_timeout = 0; set local statement_timeout = 0; " +
      `set local lock_timeout = 0; select pg_advisory_xact_lock(${PUSH_LOCK});`,
  );
  try {
    const { ok, output } = await supabaseCli([
      "db",
      "push",
      "--db-url",
      cliDbUrl(dbUrl, tls),
      "--yes",
      "--include-all",
    ]);
    if (!ok) throw new Error(`supabase db push failed:\n${output}`);
    return output;
  } finally {
    // Ends the transaction and its lock; a connection gone meanwhile took them with it (nothing was written
    // in it, so there is nothing to keep).
    await sql.unsafe("rollback").catch(() => {});
    await sql.end();
  }
}
