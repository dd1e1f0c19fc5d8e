// Prepares a database for readsync: the local platform bootstrap (only where the database is not
// already a Supabase one), then our migrations, applied by the real Supabase CLI.

import net, { isIP } from "node:net";
import { endianness, userInfo } from "node:os";
import tls from "node:tls";
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
    const target = libpqTarget(new URL(dbUrl));
    return `the database at ${serverAt(target)} (user ${target.user || "(none)"})`;
  } catch {
    return "the database"; // a connection string that is no URL
  }
}

/**
 * Where libpq connects for `target`, said as a person reads it: `host:port` (an IPv6 address in brackets, a
 * list of hosts each with its port), or the socket directory's socket (`/dir/.s.PGSQL.port`), the default
 * directory's where the URL names no host (instead of an empty host before the port).
 */
export function serverAt(target: LibpqTarget): string {
  const hosts = (target.host || DEFAULT_SOCKET_DIR).split(",");
  const ports = target.port.split(",");
  return hosts.map((host, i) => {
    const port = ports[i] ?? ports[0];
    if (host.startsWith("/")) return `${host}/.s.PGSQL.${port}`;
    return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  }).join(",");
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
  // libpq's `?password=` is the URL's password too (and comes first, as every parameter over the URL's part).
  if (url.password || url.searchParams.get("password")) return "url";
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
 * The URL parameters the Supabase CLI's pgx (v5, pgconn's ParseConfig) reads as its own, and the server
 * settings (SERVER_SETTING_PARAMETERS), which it sends on as libpq does.
 */
const CLI_PARAMETERS = [
  "host",
  "port",
  "dbname",
  "user",
  "password",
  "passfile",
  "connect_timeout",
  "sslmode",
  "sslkey",
  "sslcert",
  "sslrootcert",
  "sslpassword",
  "sslsni",
  "krbspn",
  "krbsrvname",
  "target_session_attrs",
  "service",
  "servicefile",
  "options",
  "application_name",
];

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
  // The CLI's pgx sends every parameter it does not know as a server setting (as postgres.js does: see
  // SERVER_SETTING_PARAMETERS), which the server refuses; libpq's other keywords (keepalives, hostaddr,
  // sslcompression, ...) are not given to it. Told to connect without TLS, it is given no certificate files
  // either: libpq reads none then, where pgx reads each it is given ("failed to read sslrootcert").
  for (const name of [...url.searchParams.keys()]) {
    const tlsFile = ["sslrootcert", "sslcert", "sslkey", "sslpassword"].includes(name);
    if (!CLI_PARAMETERS.includes(name) || (tlsFile && url.searchParams.get("sslmode") === "disable")) {
      url.searchParams.delete(name);
    }
  }
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

/**
 * The URL's query parameters that are server settings: what libpq sends in its startup message besides the
 * user and database (`options`, e.g. `-c search_path=…`, and `application_name`). Every other parameter a URL
 * that psql takes can carry is one of libpq's own keywords (host, hostaddr, port, dbname, user, password,
 * sslmode, sslrootcert, sslcert, sslkey, connect_timeout, target_session_attrs, keepalives, …; psql refuses
 * any other): postgres.js, given the URL, sent each on as a server setting, which the server refuses
 * (`unrecognized configuration parameter "sslrootcert"`), so a URL that passed the bootstrap failed after.
 */
const SERVER_SETTING_PARAMETERS = ["options", "application_name"];

/** The TLS of a connection as postgres.js takes it: none, TLS without checks, or node's TLS options. */
export type PostgresJsTls = false | "require" | tls.ConnectionOptions;

/**
 * What postgres.js is given for a connection to a URL as libpq makes it (connectionOptions): where (`path`,
 * a socket directory's socket; else `host` and `port`, lists in libpq's order), the database, the user, the
 * password, the server settings, the connect timeout and target_session_attrs. Its `ssl` is each attempt's
 * (firstQueryAsPsql), and once decided the connection's (DatabaseConnection).
 */
export interface PostgresJsTarget {
  path?: string;
  host?: string[];
  port?: number[];
  database: string;
  username: string;
  pass?: string;
  connection: Record<string, string>;
  connect_timeout?: number;
  target_session_attrs?: "read-write" | "read-only" | "primary" | "standby" | "prefer-standby";
}

/** A file's text for the TLS options, or undefined when it does not exist. */
function fileIfThere(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
}

/**
 * node's TLS options for an sslmode that asks for TLS (require, verify-ca, verify-full), with the certificate
 * files libpq reads: the root certificates of `sslrootcert` (else PGSSLROOTCERT, else ~/.postgresql/root.crt;
 * `system`: the system's, and verify-full as libpq has it), the client's certificate and key of `sslcert` and
 * `sslkey` (else PGSSLCERT and PGSSLKEY, else ~/.postgresql/postgresql.crt and .key, where they exist). As
 * libpq: `require` with a root certificate file checks the server's chain (verify-ca), the verify modes
 * without one fail saying which file is missing, verify-ca checks the chain and not the name, verify-full
 * both (against `servername`, the host libpq checks: the URL's, not hostaddr's).
 */
function tlsFor(url: URL, mode: "require" | "verify-ca" | "verify-full", servername: string): PostgresJsTls {
  const param = (name: string, env: string, fallback: string) =>
    url.searchParams.get(name) || Deno.env.get(env) || fallback;
  const dir = `${Deno.env.get("HOME") || "~"}/.postgresql`;
  const rootcert = param("sslrootcert", "PGSSLROOTCERT", `${dir}/root.crt`);
  const certFile = param("sslcert", "PGSSLCERT", `${dir}/postgresql.crt`);
  const keyFile = param("sslkey", "PGSSLKEY", `${dir}/postgresql.key`);
  const cert = fileIfThere(certFile);
  const key = cert === undefined ? undefined : fileIfThere(keyFile);
  const client = cert !== undefined && key !== undefined ? { cert, key } : {};
  const system = rootcert === "system";
  const ca = system ? undefined : fileIfThere(rootcert);
  const checks: "none" | "chain" | "full" = mode === "verify-full" || system
    ? "full"
    : mode === "verify-ca"
    ? "chain"
    : ca === undefined
    ? "none"
    : "chain";
  if (checks !== "none" && !system && ca === undefined) {
    throw new Error(
      `root certificate file "${rootcert}" does not exist: either provide the file (sslrootcert, ` +
        `PGSSLROOTCERT) or change sslmode (${mode}) to disable server certificate verification`,
    );
  }
  if (checks === "none") {
    return Object.keys(client).length === 0 ? "require" : { ...client, rejectUnauthorized: false };
  }
  const server = isIP(servername) ? {} : { servername };
  return {
    ...client,
    ...(ca === undefined ? {} : { ca }),
    ...server,
    rejectUnauthorized: true,
    ...(checks === "chain" ? { checkServerIdentity: () => undefined } : {}),
    ...(checks === "full" && isIP(servername)
      ? {
        checkServerIdentity: (_: string, cert: tls.PeerCertificate) =>
          tls.checkServerIdentity(servername, cert),
      }
      : {}),
  };
}

/**
 * postgres.js's options for a connection to `dbUrl` as psql makes it (its TLS aside: each attempt's): to the
 * host(s) and port(s) (a list of ports one per host, or one for all) or the socket directory, database and as
 * the user libpq takes (libpqTarget; `hostaddr` connected to in place of the host's address); with the
 * password libpq sends (the URL's or its `?password=`, else PGPASSWORD, else the password file's line:
 * postgres.js reads no password file, and no `?password=`); the URL's server settings alone
 * (SERVER_SETTING_PARAMETERS: none of libpq's keywords sent as one); its connect_timeout (seconds, as
 * libpq's) and target_session_attrs (`any`: none), which postgres.js has too.
 */
function connectionOptions(
  dbUrl: string,
): { options: PostgresJsTarget; target: LibpqTarget; servername: string } {
  const url = new URL(dbUrl);
  const target = libpqTarget(url);
  const source = passwordSource(dbUrl);
  const password = source === "url"
    ? url.searchParams.get("password") ?? decodeURIComponent(url.password)
    : source === "PGPASSWORD"
    ? Deno.env.get("PGPASSWORD")!
    : source?.password;
  const connection: Record<string, string> = {};
  for (const name of SERVER_SETTING_PARAMETERS) {
    const value = url.searchParams.get(name);
    if (value) connection[name] = value;
  }
  const host = target.host || DEFAULT_SOCKET_DIR;
  const hostaddr = url.searchParams.get("hostaddr") || Deno.env.get("PGHOSTADDR") || "";
  const hosts = (hostaddr || host).split(",");
  const ports = target.port.split(",").map((port) => Number(port));
  if (ports.some((port) => !Number.isInteger(port) || port < 1 || port > 65535)) {
    throw new Error(`invalid port number: "${target.port}" (${databaseAt(dbUrl)})`);
  }
  if (ports.length !== 1 && ports.length !== hosts.length) {
    throw new Error(
      `could not match ${ports.length} port numbers to ${hosts.length} hosts (${databaseAt(dbUrl)})`,
    );
  }
  const portOf = (i: number) => ports.length === 1 ? ports[0] : ports[i];
  const where: Pick<PostgresJsTarget, "path" | "host" | "port"> = !hostaddr && host.startsWith("/")
    ? { path: `${host}/.s.PGSQL.${portOf(0)}` }
    : { host: hosts, port: hosts.map((_, i) => portOf(i)) };
  const timeout = Number(url.searchParams.get("connect_timeout") || Deno.env.get("PGCONNECT_TIMEOUT") || "");
  const attrs = url.searchParams.get("target_session_attrs") || Deno.env.get("PGTARGETSESSIONATTRS") || "any";
  return {
    options: {
      ...where,
      database: target.database,
      username: target.user,
      ...(password !== undefined ? { pass: password } : {}),
      connection,
      ...(Number.isInteger(timeout) && timeout > 0 ? { connect_timeout: Math.max(timeout, 2) } : {}),
      ...(attrs !== "any" ? { target_session_attrs: attrs as PostgresJsTarget["target_session_attrs"] } : {}),
    },
    target,
    servername: host.split(",")[0],
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
  const { sql, ssl } = await firstQueryAsPsql(dbUrl, "select 1");
  await sql.end();
  return ssl !== false;
}

/**
 * The connection the local stack's processes make to its database (SUPABASE_DB_URL, or its own cluster's):
 * postgres.js's options for one as psql makes it (connectionOptions: where, as whom, with which password and
 * server settings) with the TLS the first such connection came to (firstQueryAsPsql: libpq's sslmode, its
 * `prefer` fallback included), decided once when the stack starts, as the CLI's is (cliDbUrl). The Realtime
 * endpoint, its WAL reader and the functions served locally connect with it (the functions by
 * postgresJsUrl or openDatabaseRelay), instead of each handing the URL to postgres.js, which reads no
 * password file and no PGSSLMODE, misreads a socket directory and a list of ports, and sends libpq's own
 * parameters to the server as settings, so that a URL that passed the bootstrap and the push failed after
 * the start.
 */
export interface DatabaseConnection {
  options: PostgresJsTarget & { ssl: PostgresJsTls };
  /** Where it connects (serverAt), for the stack's log. */
  server: string;
}

/** The connection the stack's processes make to `dbUrl` (DatabaseConnection); throws as the push does. */
export async function databaseConnection(dbUrl: string): Promise<DatabaseConnection> {
  const { sql, options, ssl } = await firstQueryAsPsql(dbUrl, "select 1");
  await sql.end();
  return { options: { ...options, ssl }, server: serverAt(libpqTarget(new URL(dbUrl))) };
}

/**
 * A URL that postgres.js reads into `db`'s connection (each host with its port, the password, the database,
 * the TLS decided as sslmode=require or disable, the server settings, connect_timeout and
 * target_session_attrs as its own options), or null where no URL can tell postgres.js that connection: a
 * socket directory (postgres.js takes a URL's host for a name to resolve), an IPv6 address (it cuts a host at
 * its first ':'), TLS with certificates to check or send (no URL parameter of postgres.js names a file).
 */
export function postgresJsUrl(db: DatabaseConnection): string | null {
  const { options } = db;
  if (options.path || !options.host || options.host.some((host) => host.includes(":") || host === "")) {
    return null;
  }
  if (options.ssl !== false && options.ssl !== "require") return null;
  const enc = encodeURIComponent;
  const auth = enc(options.username) + (options.pass !== undefined ? `:${enc(options.pass)}` : "");
  const hosts = options.host.map((host, i) => `${host}:${options.port![i]}`).join(",");
  const params = new URLSearchParams({ sslmode: options.ssl === false ? "disable" : "require" });
  for (const [name, value] of Object.entries(options.connection)) params.set(name, value);
  if (options.connect_timeout) params.set("connect_timeout", String(options.connect_timeout));
  if (options.target_session_attrs) params.set("target_session_attrs", options.target_session_attrs);
  return `postgresql://${auth}@${hosts}/${enc(options.database)}?${params}`;
}

/** A relay's address (a URL postgres.js reads, to a loopback port) and its close. */
export interface DatabaseRelay {
  url: string;
  close(): Promise<void>;
}

/**
 * A URL postgres.js reads into `db`'s connection: postgresJsUrl's where a URL can say it (close: nothing to
 * end), else a relay's (openDatabaseRelay), which close() ends. What every process of the stack's that is
 * handed a URL gets as SUPABASE_DB_URL: the functions served locally, the suites of npm test, the browser
 * tests.
 */
export async function openPostgresJsUrl(db: DatabaseConnection): Promise<DatabaseRelay> {
  const url = postgresJsUrl(db);
  return url !== null ? { url, close: () => Promise.resolve() } : await openDatabaseRelay(db);
}

/**
 * A loopback port whose every connection is passed on to `db`'s server over a connection made as `db` says:
 * to its socket directory's socket or its first host that answers (each within its connect_timeout, as
 * libpq's, where it has one), with its TLS (SSLRequest, then node's TLS with its certificates) where it
 * uses TLS. For a function served locally where no URL can tell postgres.js the connection (postgresJsUrl:
 * null): the function is given the relay's URL (no TLS to the relay, on this machine; the server sees the
 * connection the stack makes, its socket's pg_hba line and peer user, its TLS and client certificate). The
 * bytes pass unchanged: the function's own startup, password exchange and cancel requests reach the server
 * as it sends them. A side that closes has the other ended once what it sent has been passed on (a client's
 * Terminate, a server's last error reach the other side), not destroyed. close() ends every connection,
 * those still being made upstream included.
 */
export async function openDatabaseRelay(db: DatabaseConnection): Promise<DatabaseRelay> {
  const open = new Set<net.Socket>();
  const keep = (socket: net.Socket) => {
    open.add(socket);
    socket.once("close", () => open.delete(socket));
    socket.on("error", () => socket.destroy());
  };
  let closing = false;
  // The host (its index in the list) each session relayed now is on, by its BackendKeyData (process id and
  // secret key): a client's CancelRequest is passed on to the host its session is on, as libpq's sends it
  // to the session's own address, instead of to the host a new login would be taken to (hostAsAsked: a
  // host's state may have changed since; without target_session_attrs, a host down then may answer now),
  // where it would cancel nothing.
  const sessions = new Map<string, number>();
  const server = net.createServer({ pauseOnConnect: true }, async (client) => {
    keep(client);
    // Only this OS user's processes pass: another user's would reach the server as this one (a socket's
    // `peer` line, a client certificate it has no key of).
    const uid = loopbackClientUid(client.remotePort ?? 0, port, client.remoteAddress);
    if (uid !== null && uid !== Deno.uid()) return client.destroy();
    // The client's first message (its first 8 bytes; a CancelRequest's 16), passed on first.
    const first = await clientOpening(client);
    if (first === null) return client.destroy();
    const code = first.length >= 8 ? new DataView(first.buffer, first.byteOffset).getUint32(4) : 0;
    const cancelled = code === CANCEL_REQUEST_CODE ? first.subarray(8, 16).join(",") : null;
    const cancelledOn = cancelled === null ? undefined : sessions.get(cancelled);
    // Each attempt's socket is kept while it is made, so that close() and the client's leaving end it.
    const attempts = new Set<net.Socket>();
    const abandon = () => {
      for (const attempt of attempts) attempt.destroy();
    };
    client.once("close", abandon);
    const onAttempt = (attempt: net.Socket) => {
      attempts.add(attempt);
      keep(attempt);
      if (closing || client.destroyed) attempt.destroy();
    };
    (cancelledOn !== undefined ? Promise.resolve(cancelledOn) : hostAsAsked(db.options, onAttempt))
      .then((from) => connectAsDecided(db.options, onAttempt, from)).then(({ socket: upstream, index }) => {
        client.off("close", abandon);
        keep(upstream);
        if (closing || client.destroyed) return upstream.destroy();
        // A startup (not a cancel, nor an SSLRequest or GSSENCRequest, answered with one byte): its session's
        // key, once the server has sent it.
        if (code === PROTOCOL_3) {
          onServerMessage(upstream, (type, body) => {
            if (type !== 0x4b) return type === 0x5a || type === 0x45; // 'K'; ReadyForQuery or an error: none
            const key = body.subarray(0, 8).join(",");
            sessions.set(key, index);
            upstream.once("close", () => sessions.delete(key));
            return true;
          });
        }
        upstream.write(first);
        // pipe() ends the other side once this one has ended (its bytes written first); a side closed without
        // an end (reset, error) has the other ended after what was written to it is flushed.
        client.once("close", () => upstream.end());
        upstream.once("close", () => client.end());
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
      }, () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;
  const url = postgresJsUrl({
    ...db,
    options: { ...db.options, path: undefined, host: ["127.0.0.1"], port: [port], ssl: false },
  })!;
  return {
    url,
    close: async () => {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of open) socket.destroy();
      await closed;
    },
  };
}

/**
 * Where in `options`' list of hosts the relay connects from: the first whose session is as its
 * target_session_attrs asks (read-write, read-only, primary, standby; prefer-standby: a standby, else the
 * first that answers), as libpq moves on to the next host when a session is not, told by a login of the
 * relay's own (the decided connection, which ends after reading `transaction_read_only` and
 * `pg_is_in_recovery()`) to each in turn; 0 without a list or target_session_attrs (the first that
 * answers). The client's own login then reaches that host: given the list, it could not move on past the
 * relay's one address. A host that refuses the login (but with 57P03, not yet taking connections) is where
 * it connects, as libpq stops there. The list's length when no host is.
 */
async function hostAsAsked(
  options: DatabaseConnection["options"],
  attempt: (socket: net.Socket) => void,
): Promise<number> {
  const attrs = options.target_session_attrs;
  const hosts = options.host ?? [];
  if (!attrs || hosts.length < 2) return 0;
  const { target_session_attrs: _, ...probeOptions } = options;
  const wanted = (state: { readOnly: boolean; standby: boolean }, pass: number) =>
    attrs === "read-write"
      ? !state.readOnly
      : attrs === "read-only"
      ? state.readOnly
      : attrs === "primary"
      ? !state.standby
      : attrs === "standby"
      ? state.standby
      : pass === 0
      ? state.standby
      : true; // prefer-standby: a standby first, else any
  for (let pass = 0; pass < (attrs === "prefer-standby" ? 2 : 1); pass++) {
    for (let from = 0; from < hosts.length;) {
      let reached = hosts.length;
      const probe = postgres({
        ...probeOptions,
        max: 1,
        onnotice: () => {},
        ssl: false,
        host: [hosts[from]],
        port: [options.port![from]],
        socket: async () => {
          const made = await connectAsDecided(options, attempt, from);
          reached = made.index;
          return made.socket;
        },
      } as unknown as postgres.Options<Record<string, postgres.PostgresType>>);
      try {
        const [readOnly, standby] = await probe.unsafe(
          "select current_setting('transaction_read_only') = 'on' as r, pg_catalog.pg_is_in_recovery() as s",
        ).values().then(([[r, s]]) => [r as boolean, s as boolean]);
        if (wanted({ readOnly, standby }, pass)) return reached;
      } catch (error) {
        // No host from `from` on could be connected to (or one refused its TLS): the connection says why.
        if (reached >= hosts.length) break;
        // This host refused the login (its pg_hba.conf line, the password, a connection limit): libpq stops
        // there (fe-connect.c: error_return), moving on only from one that cannot take connections yet
        // (57P03, a standby starting up), so the client's own login is taken to it and meets the same
        // refusal, instead of reaching a later host where psql would not connect.
        if ((error as { code?: string }).code !== "57P03") return reached;
      } finally {
        await probe.end({ timeout: 0 });
      }
      from = reached + 1;
    }
  }
  return hosts.length;
}

/**
 * The OS user owning the client's end of the loopback connection from `clientAddress`:`clientPort` to
 * 127.0.0.1:`serverPort` (the relay's IPv4 port), as the kernel lists it (the `uid` column): in
 * /proc/net/tcp, or in /proc/net/tcp6 for an IPv6 socket that reached it at ::ffff:127.0.0.1 (another
 * user's psql given that host was passed on as this user's where only /proc/net/tcp was read); the client's
 * address as accepted (a client may bind 127.0.0.2, not only 127.0.0.1). `closed` where the end has no
 * socket any more (inode 0: its process closed it, or exited): the kernel lists such an end, once it waits
 * out FIN_WAIT2 or TIME_WAIT, as uid 0, which is no user's, not root's (a startup and query sent with a close
 * at once passed a relay run as root, as root's). null where no table lists it (no /proc, or a read that
 * missed the line): the relay then cannot tell, and lets it pass.
 */
export function loopbackClientUid(
  clientPort: number,
  serverPort: number,
  clientAddress = "127.0.0.1",
): number | "closed" | null {
  // An address as the tables print it: its bytes in 32-bit words, each in the host's byte order.
  const at = (bytes: number[], port: number) => {
    const words: string[] = [];
    for (let i = 0; i < bytes.length; i += 4) {
      const word = bytes.slice(i, i + 4);
      if (endianness() === "LE") word.reverse();
      words.push(word.map((byte) => byte.toString(16).padStart(2, "0")).join(""));
    }
    return `${words.join("")}:${port.toString(16).padStart(4, "0")}`.toUpperCase();
  };
  const v4 = (address: string) => address.replace(/^::ffff:/i, "").split(".").map(Number);
  const mapped = (address: string) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...v4(address)];
  const tables = [
    { file: "/proc/net/tcp", bytes: v4 },
    { file: "/proc/net/tcp6", bytes: mapped },
  ];
  for (const { file, bytes } of tables) {
    let table: string;
    try {
      table = Deno.readTextFileSync(file);
    } catch {
      continue;
    }
    const client = at(bytes(clientAddress), clientPort);
    const server = at(bytes("127.0.0.1"), serverPort);
    for (const line of table.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields[1] === client && fields[2] === server) {
        return fields[9] === "0" ? "closed" : Number(fields[7]);
      }
    }
  }
  return null;
}

/**
 * A connection to `options`' server, its TLS begun where it has TLS (`options.ssl`: SSLRequest, then node's
 * TLS with its certificates), and which of its targets it went to: to each of its targets from the `from`th
 * on in turn until one can be connected to, each given its connect_timeout (seconds, as libpq's) where it
 * has one. As libpq's (fe-connect.c: a failed connect() or the timeout try the next host; a refusal of TLS
 * ('N' under require), a failed TLS handshake or a close once connected `goto error_return`), a host that
 * was connected to and then refuses or fails the TLS asked for ends the whole connection with its error,
 * instead of giving way to the next host, where psql would refuse to connect. `attempt` is told of each
 * socket as it is made. The relay's (openDatabaseRelay), and each attempt's of a
 * connection made as psql makes it (firstQueryAsPsql), which reads what the server says on it.
 */
async function connectAsDecided(
  options: DatabaseConnection["options"],
  attempt: (socket: net.Socket) => void = () => {},
  from = 0,
): Promise<{ socket: net.Socket; index: number }> {
  const targets = options.path
    ? [{ path: options.path, host: "", port: 0 }]
    : options.host!.map((host, i) => ({ path: undefined, host, port: options.port![i] }));
  let failed: unknown = new Error("no host left to connect to");
  for (const [index, target] of targets.entries()) {
    if (index < from) continue;
    let socket: net.Socket | undefined;
    let timer: ReturnType<typeof setTimeout> | undefined;
    // Set once the host has been connected to: a failure after it (but the timeout's) is the connection's.
    let connected = false;
    const expired = new Error(`timeout expired (connect_timeout ${options.connect_timeout} s)`);
    try {
      socket = target.path ? net.connect(target.path) : net.connect(target.port!, target.host);
      attempt(socket);
      const made = socket;
      const timedOut = new Promise<never>((_, reject) => {
        if (!options.connect_timeout) return;
        timer = setTimeout(() => {
          reject(expired);
          made.destroy();
        }, options.connect_timeout * 1000);
      });
      timedOut.catch(() => {});
      const gone = () => new Error("the connection was closed while it was made");
      await Promise.race([
        timedOut,
        new Promise<void>((resolve, reject) => {
          made.once("connect", resolve);
          made.once("error", reject);
          made.once("close", () => reject(gone()));
        }),
      ]);
      connected = true;
      if (options.ssl === false) return { socket, index };
      socket.write(SSL_REQUEST);
      const offered = await Promise.race([
        timedOut,
        new Promise<boolean>((resolve, reject) => {
          made.once("data", (answer: Uint8Array) => resolve(answer[0] === 0x53)); // 'S'
          made.once("error", reject);
          made.once("close", () => reject(new Error("the server closed the connection")));
        }),
      ]);
      if (!offered) throw new Error(`the server at ${target.host} no longer takes TLS connections`);
      const secure = tls.connect({
        socket,
        ...(isIP(target.host) ? {} : { servername: target.host }),
        ...(options.ssl === "require" ? { rejectUnauthorized: false } : options.ssl),
      });
      attempt(secure);
      await Promise.race([
        timedOut,
        new Promise<void>((resolve, reject) => {
          secure.once("secureConnect", resolve);
          secure.once("error", reject);
          secure.once("close", () => reject(gone()));
        }),
      ]);
      return { socket: secure, index };
    } catch (error) {
      socket?.destroy();
      if (connected && error !== expired) throw error;
      failed = error;
    } finally {
      clearTimeout(timer);
    }
  }
  throw failed;
}

/**
 * `query` (simple: no prepared statement) run first on a connection to `dbUrl` made as psql makes it
 * (connectionOptions): the connection, which the caller ends, the query's results, its options and TLS. Its
 * TLS as libpq's sslmode (sslModeFor) has it: `prefer` asks for it where the server offers it
 * (serverOffersTls) and, should that attempt fail before the server's AuthenticationOk (the TLS handshake
 * failed, as against a server whose TLS versions or certificate the client does not take, or the server
 * refused the connection: 28000, its pg_hba.conf having no line for it, as with hostnossl lines only),
 * connects again without it, as libpq's fe-connect.c does on either (an error after AuthenticationOk, a
 * role's connection limit, is the connection's, as libpq's); a `require` whose first host that answers takes
 * no TLS fails, as libpq's (it moves on only from a host it cannot connect to); `allow` connects without it first, and again with
 * it should that fail so; `disable` never asks for it, `require` and the verify modes always (tlsFor); over a
 * socket directory, none (libpq uses none there). postgres.js has no such fallback of its own (its `prefer`
 * only takes what the server offers, and its `allow` asks for TLS whether offered or not), and does not read
 * PGSSLMODE. Its error, on a connection that failed, said as psql's is (connectionError); the connection is
 * ended then.
 */
async function firstQueryAsPsql(
  dbUrl: string,
  query: string,
): Promise<
  {
    sql: postgres.Sql;
    results: postgres.RowList<postgres.Row[]>;
    options: PostgresJsTarget;
    ssl: PostgresJsTls;
  }
> {
  const url = new URL(dbUrl);
  const { options, target, servername } = connectionOptions(dbUrl);
  const mode = sslModeFor(url);
  let attempts: PostgresJsTls[];
  // What the first host that answers says of TLS (libpq asks each host it tries in turn): a first host that
  // refused left a prefer without TLS, refused then by a later host that takes TLS connections only.
  const offersTls = async () => {
    for (const [i, host] of (options.host ?? []).entries()) {
      const offered = await serverOffersTls(host, options.port![i]);
      if (offered !== undefined) return offered;
    }
    return undefined;
  };
  if (!options.host || mode === "disable") attempts = [false];
  else if (mode === "allow") attempts = [false, tlsFor(url, "require", servername)];
  else if (mode === "prefer") {
    attempts = (await offersTls()) === true ? [tlsFor(url, "require", servername), false] : [false];
  } else {
    // Only a server that answered no: one that could not be asked is tried, and its error said.
    if ((await offersTls()) === false) {
      throw new Error(
        `${databaseAt(dbUrl)} does not take TLS connections, and its sslmode (${mode}) asks for one ` +
          `(server ${serverAt(target)})`,
      );
    }
    attempts = [tlsFor(url, mode, servername)];
  }
  for (let i = 0;; i++) {
    const ssl = attempts[i];
    // Set once the server has sent AuthenticationOk: past it, an error (a role's or a database's connection
    // limit, 53300; a role that may not log in) ends the attempt as libpq's, which connects again without
    // (or with) TLS only on an error before it (fe-connect.c: CONNECTION_AWAITING_RESPONSE).
    let authenticated = false;
    // The attempt's connection is made here (its TLS too), not by postgres.js: what the server sends on it is
    // read as sent (postgres.js tells of no AuthenticationOk), and a host that answers its target_session_attrs
    // wrongly (postgres.js ends the connection and makes a new one) gives way to the next of the list.
    let nextHost = 0;
    // No host left to connect to: postgres.js, given a list of hosts, waits for another connection instead
    // of failing the query, so the query fails here.
    const noHostLeft = Promise.withResolvers<never>();
    noHostLeft.promise.catch(() => {});
    const sql = postgres({
      max: 1,
      onnotice: () => {},
      ...options,
      ssl: false,
      socket: async () => {
        try {
          const { socket, index } = await connectAsDecided({ ...options, ssl }, undefined, nextHost);
          nextHost = index + 1;
          onAuthenticationOk(socket, () => authenticated = true);
          return socket;
        } catch (error) {
          noHostLeft.reject(error);
          throw error;
        }
      },
    } as postgres.Options<Record<string, postgres.PostgresType>>);
    try {
      return { sql, results: await Promise.race([sql.unsafe(query), noHostLeft.promise]), options, ssl };
    } catch (error) {
      await sql.end({ timeout: 0 });
      if (i + 1 >= attempts.length || authenticated) throw connectionError(dbUrl, error);
    }
  }
}

/**
 * Calls `seen` once the server has sent AuthenticationOk on `socket` (a message 'R' of length 8 whose code is
 * 0), read from what arrives on it beside its own reader (what precedes it: the authentication exchange, an
 * error, a notice).
 */
function onAuthenticationOk(socket: net.Socket, seen: () => void): void {
  onServerMessage(socket, (type, body) => {
    if (type !== 0x52 || body.length !== 4 || new DataView(body.buffer, body.byteOffset).getUint32(0) !== 0) {
      return false;
    }
    seen();
    return true;
  });
}

/**
 * Calls `message` with each message the server sends on `socket` (its type, its body), read beside the
 * socket's own reader, until it returns true.
 */
function onServerMessage(socket: net.Socket, message: (type: number, body: Uint8Array) => boolean): void {
  let pending = new Uint8Array(0);
  const read = (chunk: Uint8Array) => {
    const joined = new Uint8Array(pending.length + chunk.length);
    joined.set(pending);
    joined.set(chunk, pending.length);
    pending = joined;
    while (pending.length >= 5) {
      const view = new DataView(pending.buffer, pending.byteOffset, pending.length);
      const length = view.getUint32(1);
      if (pending.length < 1 + length) return;
      if (message(pending[0], pending.subarray(5, 1 + length))) return socket.off("data", read);
      pending = pending.subarray(1 + length);
    }
  };
  socket.on("data", read);
}

/** The code of a CancelRequest (its 16 bytes: length, this code, the process id and the secret key). */
const CANCEL_REQUEST_CODE = 80877102;

/** The protocol version of a StartupMessage (3.0), where a request has its code. */
const PROTOCOL_3 = 196608;

/**
 * The first bytes a relay's client sends, read off it (it is paused again after): its first message's
 * length and code (8 bytes: all of an SSLRequest), all 16 of a CancelRequest; null when it leaves first.
 */
function clientOpening(client: net.Socket): Promise<Uint8Array | null> {
  return new Promise((resolve) => {
    let got = new Uint8Array(0);
    const enough = () =>
      got.length >= 8 &&
      (new DataView(got.buffer, got.byteOffset).getUint32(4) !== CANCEL_REQUEST_CODE || got.length >= 16);
    const done = (result: Uint8Array | null) => {
      client.off("data", read);
      client.off("close", gone);
      client.pause();
      resolve(result);
    };
    const read = (chunk: Uint8Array) => {
      const joined = new Uint8Array(got.length + chunk.length);
      joined.set(got);
      joined.set(chunk, got.length);
      got = joined;
      if (enough()) done(got);
    };
    const gone = () => done(null);
    client.on("data", read);
    client.once("close", gone);
    client.resume();
  });
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
  const { sql, ssl } = await firstQueryAsPsql(
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
      cliDbUrl(dbUrl, ssl !== false),
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
