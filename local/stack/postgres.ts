// A throwaway PostgreSQL cluster for the local stack: initdb into a temp dir, start on a free port
// with wal_level=logical, stop and delete on exit. postgres refuses to run as root, so as root the
// cluster runs as a dedicated system user. A detached watchdog stops the cluster and removes its
// directory if this process dies without cleaning up (kill -9, a crashed test runner). A start that
// fails (a step that fails or never ends, a server that never gets ready) leaves nothing behind.

import { cleanupsBegun, onCleanup } from "./cleanup.ts";
import { type OnPhase, timed } from "./phases.ts";
import { ensureSystemPackages, exists, findPostgresBinaries, isRoot } from "./system.ts";

const CLUSTER_OS_USER = "readsync-pg";

export interface LocalPostgres {
  url: string;
  port: number;
  dataDir: string;
  /** The key of the initdb template the cluster was made from (its own or one derived from it); else null. */
  initdbTemplateKey: string | null;
  /**
   * Stops the server (a fast shutdown: its shutdown checkpoint leaves the directory consistent), copies its
   * data directory into `into` (cp -a: owner and mode kept) and starts it again on the same port, in the same
   * directory: the stack's migrated template (local/stack/migrated_template.ts). A cluster that has a
   * replication slot is refused before it is stopped (a copy would hold that slot, and the WAL it keeps).
   * Throws ServerNotRestarted when the server did not start again (the cluster is then gone); any other
   * error leaves it running.
   */
  copyStopped(into: string): Promise<void>;
  stop(): Promise<void>;
}

/** The server stopped for a copy (LocalPostgres.copyStopped) did not start again: the cluster is gone. */
export class ServerNotRestarted extends Error {}

/** A TCP port that was free a moment ago (the OS picks it; whoever binds it next wins). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/**
 * How long one child step may take (initdb, a copy, pg_basebackup, the start and a restore's recovery)
 * before it is killed and the start fails saying so: a guard against a step that never ends (a
 * pg_basebackup whose server accepts and never answers hangs forever), generous for a loaded machine.
 */
const STEP_TIMEOUT_MS = 60_000;

/** How many ports a start picks before it gives up when each was taken before postgres could bind it. */
const PORT_ATTEMPTS = 5;

/** A child step killed for not having ended within its time (see `run`). */
class StepTimedOut extends Error {}

/**
 * Runs a child to its end; its stdout, and its stdout and stderr, as text. The child runs in a process
 * group of its own, killed whole (SIGKILL) once the child has ended, so that what it forked ends with it
 * (pg_basebackup's WAL streamer outlives a killed parent), or once `timeoutMs` has passed without an
 * end, which is then an error naming the step.
 */
async function run(
  cmd: string,
  args: string[],
  timeoutMs = STEP_TIMEOUT_MS,
): Promise<{ step: string; success: boolean; code: number; stdout: string; text: string }> {
  const step = (cmd === "setpriv" ? args[args.indexOf("--") + 1] : cmd).split("/").pop()!;
  const child = new Deno.Command(cmd, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    detached: true,
  }).spawn();
  const killGroup = () => {
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch { /* the group is gone */ }
  };
  // In a group of its own, a Ctrl-C at the terminal no longer reaches it: the cleanups end it instead,
  // and wait for it to have ended before the next ones remove the directory it writes into.
  const forget = onCleanup(async () => {
    killGroup();
    await child.status;
  });
  const out: string[] = [];
  const err: string[] = [];
  const read = (stream: ReadableStream<Uint8Array>, into: string[]) =>
    stream.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (c) => void into.push(c) }),
    ).catch(() => {});
  const reading = Promise.all([read(child.stdout, out), read(child.stderr, err)]);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    killGroup();
  }, timeoutMs);
  const status = await child.status;
  clearTimeout(timer);
  killGroup();
  forget();
  await reading;
  const text = out.join("") + err.join("");
  if (timedOut) {
    throw new StepTimedOut(
      `${step} did not finish within ${timeoutMs / 1000} s and was killed (${cmd} ${args.join(" ")})` +
        (text ? `:\n${text}` : ""),
    );
  }
  return { step, success: status.success, code: status.code, stdout: out.join(""), text };
}

async function exec(cmd: string, args: string[], timeoutMs = STEP_TIMEOUT_MS): Promise<string> {
  const { step, success, code, text } = await run(cmd, args, timeoutMs);
  if (!success) throw new Error(`${step} failed (exit code ${code}; ${cmd} ${args.join(" ")}):\n${text}`);
  return text;
}

/**
 * The cluster OS user's uid and gid, making the user when there is none. Read from /etc/passwd, where
 * `useradd --system` puts it, instead of asking `id` twice on every start (100–230 ms under load; the answer
 * changes only when the user is added or removed, which rewrites that file, read anew each time); `id` only
 * when the file does not list the user (another user database) and once the user has been made.
 */
async function ensureOsUser(): Promise<{ uid: number; gid: number }> {
  const listed = osUserFromPasswd();
  if (listed) return listed;
  const id = async (flag: string) => Number((await exec("id", [flag, CLUSTER_OS_USER])).trim());
  try {
    return { uid: await id("-u"), gid: await id("-g") };
  } catch {
    await exec("useradd", [
      "--system",
      "--user-group",
      "--no-create-home",
      "--shell",
      "/usr/sbin/nologin",
      CLUSTER_OS_USER,
    ])
      .catch(async (e) => {
        // A concurrent run may have created it between our check and useradd.
        if (!(await exec("id", ["-u", CLUSTER_OS_USER]).catch(() => ""))) throw e;
      });
    return { uid: await id("-u"), gid: await id("-g") };
  }
}

/** The cluster OS user's uid and primary gid (what `id -u` and `id -g` say) as /etc/passwd lists them. */
function osUserFromPasswd(): { uid: number; gid: number } | null {
  let passwd: string;
  try {
    passwd = Deno.readTextFileSync("/etc/passwd");
  } catch {
    return null;
  }
  for (const line of passwd.split("\n")) {
    const [name, , uid, gid] = line.split(":");
    if (name === CLUSTER_OS_USER && /^\d+$/.test(uid ?? "") && /^\d+$/.test(gid ?? "")) {
      return { uid: Number(uid), gid: Number(gid) };
    }
  }
  return null;
}

/**
 * What changes when a file is written anew or replaced: its inode, size, modification time and status
 * change time. The ctime too: a binary overwritten in place with `cp -p` keeps its inode, may keep its size,
 * and is given the mtime of the file copied, but its ctime is the copy's (no call sets it). Other changes
 * also move it (chmod, chown, a hard link made): the version is then asked once more, nothing worse.
 */
export function fileIdentity(path: string): string {
  const info = Deno.statSync(path);
  return `${info.ino}:${info.size}:${info.mtime?.getTime()}:${info.ctime?.getTime()}`;
}

/** A `version-<key>.<pid>.<uuid>` file being written (postgresVersion), the pid of its writer captured. */
const VERSION_WRITING = /^version-[0-9a-f]+\.(\d+)\.[0-9a-f-]+$/;

/**
 * A template directory being built (makeTemplate): `[<kind>-]<key>.building-<pid>-<random>` (the initdb
 * template has no kind; the stack's migrated template is `migrated-`), the pid of the start that builds it
 * captured; `<key>.building-<random>` (no pid) is one an older start began.
 */
const TEMPLATE_BUILDING = /^(?:[a-z]+-)?[0-9a-f]+\.building-(?:(\d+)-)?[^-]+$/;

/**
 * Removes under `root` what a start that died half-way through a write left (kill -9, a crash, the OOM
 * killer), which no start reads or removes: `version-<key>.<pid>.<uuid>` files (died between the write
 * and the rename) and `<key>.building-*` template directories (died during the build, ≈ 40 MB each; a
 * Ctrl-C's cleanups remove their own). One whose writer lives is a write under way, and kept. Whether the
 * writer lives is told by /proc; where there is none, or the name has no pid (an older start's), one older
 * than an hour counts as left (a write takes milliseconds, a build seconds). One another start removed
 * meanwhile is no error. (A live start in another pid namespace sharing this temp dir would look gone.)
 */
async function sweepLeftWrites(root: string): Promise<void> {
  const procs = exists("/proc/self");
  for await (const entry of Deno.readDir(root)) {
    const match = entry.isFile
      ? entry.name.match(VERSION_WRITING)
      : entry.isDirectory
      ? entry.name.match(TEMPLATE_BUILDING)
      : null;
    if (!match) continue;
    const pid = match[1];
    const path = `${root}/${entry.name}`;
    const left = procs && pid !== undefined
      ? !exists(`/proc/${pid}`)
      : Date.now() - ((await Deno.stat(path).catch(() => null))?.mtime?.getTime() ?? Date.now()) > 3_600_000;
    if (left) await Deno.remove(path, { recursive: true }).catch(() => {});
  }
}

/**
 * What `postgres --version` says for the binary at `path`, kept under `root` (the templates' directory)
 * keyed by the binary's path and identity (fileIdentity): the answer is the build's own, so a later start,
 * in this process or another (each cold start is a process of its own), reads it instead of running the
 * binary again (100–230 ms under load). A package upgrade replaces the file (a new inode and time), a
 * `cp -p` over it writes it (a new ctime): its version is then asked, and a template keyed by it made.
 */
async function postgresVersion(root: string, path: string): Promise<string> {
  const digest = await crypto.subtle.digest(
    "SHA-256",
    new TextEncoder().encode(`${path}\n${fileIdentity(path)}`),
  );
  const key = [...new Uint8Array(digest)].slice(0, 8).map((b) => b.toString(16).padStart(2, "0")).join("");
  const kept = `${root}/version-${key}`;
  try {
    const version = (await Deno.readTextFile(kept)).trim();
    if (version) return version;
  } catch { /* not asked yet */ }
  const version = (await exec(path, ["--version"])).trim();
  // What a start that died mid-write left is removed as this one writes (only then: a start that reads its
  // version lists nothing).
  await sweepLeftWrites(root);
  // Written whole, then renamed into place: a concurrent start never reads half of it.
  const writing = `${kept}.${Deno.pid}.${crypto.randomUUID()}`;
  await Deno.writeTextFile(writing, `${version}\n`);
  await Deno.rename(writing, kept).catch(() => Deno.remove(writing).catch(() => {}));
  return version;
}

/**
 * Asks the server to shut down with `signal` (SIGINT: fast; SIGQUIT: immediate) and waits for it to
 * end, killing it if it has not ended within 10 s.
 */
async function endServer(server: Deno.ChildProcess, signal: Deno.Signal): Promise<void> {
  try {
    server.kill(signal);
  } catch { /* already gone */ }
  const timer = setTimeout(() => {
    try {
      server.kill("SIGKILL");
    } catch { /* gone */ }
  }, 10_000);
  await server.status;
  clearTimeout(timer);
}

/** A template made from a cluster of the initdb template (StartOptions.derivedTemplate). */
export interface DerivedTemplate {
  /** What the phases call it ("migrated": "database: migrated template copied (cp -a)"). */
  name: string;
  /**
   * Its data directory, ready to copy, for a cluster of the initdb template with this key; null when there is
   * none (the initdb template is copied then). An error is logged, and the initdb template copied.
   */
  find(initdbTemplateKey: string): Promise<string | null>;
  /**
   * Called when the directory `find` gave could not be copied (gone since: a start that made another template
   * removed it as unused, migrated_template.ts pruneUnused): the initdb template was copied instead.
   */
  notCopied(): void;
}

export interface StartOptions {
  port?: number;
  log?: (line: string) => void;
  /**
   * Keep PostgreSQL's durable defaults (fsync, synchronous_commit, full_page_writes on), as a
   * Supabase database runs. Off by default: tests and the everyday stack want speed, not durability.
   */
  durable?: boolean;
  /** Copy the cached initdb template (default) instead of running initdb; see initdbTemplate. */
  template?: boolean;
  /**
   * A template made from a cluster of the initdb template, copied instead of it when `find` gives one (the
   * stack's migrated template: local/stack/migrated_template.ts). Only when the initdb template is used.
   */
  derivedTemplate?: DerivedTemplate;
  /**
   * Instead of a new cluster, a point-in-time restore of the running cluster at this URL (which must
   * take replication connections, as the local stack's does): a base backup (pg_basebackup), recovered
   * to the backup's end and promoted to a new timeline, as a provider's point-in-time restore does.
   * Resolves once it has left recovery and takes writes. A base backup or recovery that fails or does
   * not end within `stepTimeoutMs` rejects, saying which step and why, and leaves nothing behind.
   */
  restoreOf?: string;
  /**
   * Picks the port when `port` is not given (default: a port the OS says is free now); tests inject one
   * that returns a port they hold, as another process that took it first would, or that holds a retry
   * (a stop's run-down comes between two attempts).
   */
  pickPort?: () => number | Promise<number>;
  /** How long each child step may take before it is killed (default 60 s); tests of the guard lower it. */
  stepTimeoutMs?: number;
  /**
   * How long the started server may take to take connections (a restore: to leave recovery) before the
   * start fails saying so; default `stepTimeoutMs`. Tests of that deadline lower it alone.
   */
  readyTimeoutMs?: number;
  /**
   * Runs once a start has failed, before it tears down what it started: tests hold the tear-down there,
   * where a stop that comes meanwhile must still wait for it (and not exit with the directory left).
   */
  beforeTearDown?: () => Promise<void> | void;
  /** Told how long each step of the start took (the benchmark's cold-start phases: local/stack/phases.ts). */
  onPhase?: OnPhase;
}

const INITDB_ARGS = ["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"];

/**
 * A data directory fresh from initdb, kept as a template: initdb with the same binaries and
 * arguments always makes the same cluster, so the first start keeps one and later starts copy it
 * (≈ 0.15 s for 39 MB here) instead of running initdb again (≈ 1.4 s, several seconds under load).
 * Keyed by the PostgreSQL build and the arguments; kept under the temp dir (a reboot or a fresh CI
 * machine builds it again). Built in a private directory and renamed into place, so concurrent
 * first starts never see half a template. READSYNC_PG_TEMPLATE=0 turns it off.
 */
async function initdbTemplate(
  binDir: string,
  initdbInto: (dir: string) => Promise<void>,
  log: (line: string) => void,
  onPhase?: OnPhase,
): Promise<{ dataDir: string; key: string }> {
  const { root, version } = await timed(
    onPhase,
    "database: template looked up (postgres --version, kept per binary)",
    async () => {
      const root = await templatesRoot();
      return { root, version: await postgresVersion(root, `${binDir}/postgres`) };
    },
  );
  const key = await templateKey([binDir, version, ...INITDB_ARGS].join("\n"));
  const started = performance.now();
  const { dataDir, made } = await makeTemplate(
    root,
    key,
    (dir) => timed(onPhase, "database: initdb template made (initdb)", () => initdbInto(dir)),
    version,
  );
  if (made) {
    log(`database: initdb template made in ${Math.round(performance.now() - started)} ms (${root}/${key})`);
  }
  return { dataDir, key };
}

/**
 * The templates' directory, under the temp dir (a reboot or a fresh CI machine builds them again), made when
 * there is none: this user's own, traversable (0711) but not listable, so the cluster's OS user can reach
 * its own directories. The temp dir is shared: a directory someone else made (or may write to) is refused.
 */
export async function templatesRoot(): Promise<string> {
  const root = `${Deno.env.get("TMPDIR") ?? "/tmp"}/readsync-pg-templates-${Deno.uid() ?? "user"}`;
  await Deno.mkdir(root, { recursive: true, mode: 0o711 });
  const owner = await Deno.stat(root);
  if (owner.uid !== Deno.uid() || ((owner.mode ?? 0) & 0o022) !== 0) {
    throw new Error(`${root} is not this user's own directory`);
  }
  return root;
}

/** A template's key: the first 8 bytes of the SHA-256 of what decides its contents, in hex. */
export async function templateKey(decides: string | Uint8Array<ArrayBuffer>): Promise<string> {
  const bytes = typeof decides === "string" ? new TextEncoder().encode(decides) : decides;
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].slice(0, 8).map((b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The data directory of the template `<root>/<name>`, built by `build` (into the data directory it is given)
 * when there is none yet (`made`: this call built it and put it in place). Built in a private directory (`<name>.building-<pid>-<random>`) and renamed into
 * place once complete, so that concurrent first starts never see half a template: of two that build it at
 * once, the second to finish removes its own and uses the first's. A Ctrl-C during the build removes it (its
 * steps are ended first: cleanups run newest first); what a builder that died (kill -9) left is swept by the
 * next build (sweepLeftWrites).
 */
export async function makeTemplate(
  root: string,
  name: string,
  build: (dataDir: string) => Promise<void>,
  stamp: string,
): Promise<{ dataDir: string; made: boolean }> {
  const ready = `${root}/${name}`;
  if (exists(`${ready}/complete`)) return { dataDir: `${ready}/data`, made: false };

  // What a start that died during its build left is removed as this one builds (only then, as above). The
  // build's name has this process's pid: a later start tells whether it still runs.
  await sweepLeftWrites(root);
  const building = await Deno.makeTempDir({ dir: root, prefix: `${name}.building-${Deno.pid}-` });
  // One removal, however often asked for (the catch below and a run-down both wait for that one).
  let removing: Promise<void> | null = null;
  const removeBuilding = () => removing ??= Deno.remove(building, { recursive: true }).catch(() => {});
  // A Ctrl-C during the build (its initdb is killed first: cleanups run newest first) removes it too,
  // instead of leaving a half-built template that no later start uses or removes. Forgotten only once
  // it has run (finally, below): a run-down that begins meanwhile still finds it and waits for it.
  const forgetBuilding = onCleanup(removeBuilding);
  try {
    await Deno.chmod(building, 0o711);
    await build(`${building}/data`);
    await Deno.writeTextFile(`${building}/complete`, `${stamp}\n`);
    await Deno.rename(building, ready);
  } catch (error) {
    await removeBuilding();
    // Another start finished the same template first: use theirs (unless the build lost its cluster).
    if (!exists(`${ready}/complete`) || error instanceof ServerNotRestarted) throw error;
    return { dataDir: `${ready}/data`, made: false };
  } finally {
    forgetBuilding();
  }
  return { dataDir: `${ready}/data`, made: true };
}

/** Throws a clear error when something already listens on 127.0.0.1:`port`. */
export function assertPortFree(port: number): void {
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
  } catch (error) {
    if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    throw new Error(
      `port ${port} is already in use (another readsync stack, \`supabase start\`, a PostgreSQL ` +
        `cluster?); stop it or choose another port (READSYNC_DB_PORT for npm start)`,
    );
  }
}

export async function startPostgres(options: StartOptions = {}): Promise<LocalPostgres> {
  const log = options.log ?? console.log;
  const stepTimeoutMs = options.stepTimeoutMs ?? STEP_TIMEOUT_MS;
  await timed(options.onPhase, "database: system packages checked", () => ensureSystemPackages(log));
  const bins = findPostgresBinaries()!;
  // A port asked for that something holds (another stack, `supabase start`, a system cluster) is refused
  // up front, saying so. A port picked here is not checked: another process (several test runs start
  // stacks at once on one machine) may take it between the pick and postgres' bind anyway, so a server
  // that cannot bind it is started again on another (PORT_ATTEMPTS in all, below).
  const picked = options.port === undefined;
  if (options.port !== undefined) assertPortFree(options.port);
  let port = options.port ?? 0;
  const dataDir = await Deno.makeTempDir({ prefix: "readsync-pg-" });
  // Set by each launch below (the one of the last attempt, once it is ready; a copyStopped's relaunch).
  let child = null as Deno.ChildProcess | null;
  let watchdog = null as Deno.ChildProcess | null;
  let initdbTemplateKey: string | null = null;
  // The launch below, kept for copyStopped's restart.
  let relaunch = null as ((port: number) => Promise<string | null>) | null;
  // A start that fails, or is interrupted (Ctrl-C), leaves nothing behind: the server (an immediate
  // shutdown, which waits for its processes, so that none writes into the directory as it is removed),
  // its watchdog, the directory. One tear-down at a time: the catch below and a run-down (a stop) that
  // begins while one runs both wait for that one, which ends what the start has running when it runs,
  // again until nothing new was launched meanwhile (a port retry). Asked for again once it has ended, it
  // runs again: a start that ran on after a run-down had torn it down fails, and its own tear-down ends
  // what it launched since, instead of finding the first one done. Once a tear-down has begun, the start
  // launches no server more (`abandoned`, checked before each launch): a port retry after a stop would only
  // fail (its directory removed) and be torn down again.
  let tearingDown: Promise<void> | null = null;
  let abandoned = false;
  const abandon = () => {
    abandoned = true;
    return tearingDown ??= (async () => {
      try {
        for (;;) {
          const [server, guard] = [child, watchdog];
          if (server) await endServer(server, "SIGQUIT");
          if (guard) {
            try {
              guard.kill("SIGKILL");
            } catch { /* gone */ }
            await guard.status;
          }
          await Deno.remove(dataDir, { recursive: true }).catch(() => {});
          if (child === server && watchdog === guard) break;
        }
      } finally {
        tearingDown = null;
      }
    })();
  };
  const forgetAbandon = onCleanup(abandon);
  try {
    // As root: run initdb/postgres as an unprivileged user through setpriv, which execs in place, so
    // the pid we hold is postgres itself and signals reach it directly.
    let asUser: string[] = [];
    if (isRoot()) {
      const { uid, gid } = await timed(
        options.onPhase,
        "database: cluster OS user (/etc/passwd, else id)",
        ensureOsUser,
      );
      await Deno.chown(dataDir, uid, gid);
      asUser = ["setpriv", `--reuid=${uid}`, `--regid=${gid}`, "--clear-groups", "--"];
    }
    const cmd = (bin: string, args: string[]) =>
      asUser.length ? { cmd: asUser[0], args: [...asUser.slice(1), `${bins.binDir}/${bin}`, ...args] } : {
        cmd: `${bins.binDir}/${bin}`,
        args,
      };

    const pgdata = `${dataDir}/data`;
    const initdbInto = async (dir: string) => {
      if (isRoot()) {
        await Deno.mkdir(dir, { mode: 0o700 });
        const { uid, gid } = await ensureOsUser();
        await Deno.chown(dir, uid, gid);
      }
      const init = cmd("initdb", ["-D", dir, ...INITDB_ARGS]);
      await exec(init.cmd, init.args, stepTimeoutMs);
    };
    const template = options.restoreOf !== undefined ||
        options.template === false || Deno.env.get("READSYNC_PG_TEMPLATE") === "0"
      ? null
      : await initdbTemplate(bins.binDir, initdbInto, log, options.onPhase).catch((e) => {
        // Torn down meanwhile (a stop killed the look-up or the template's initdb): the start ends here,
        // saying so, instead of logging that it runs initdb, which it would not (or only to be killed).
        if (abandoned) {
          throw new Error(
            `the PostgreSQL start was torn down (a stop, or the end of a run) during its initdb template ` +
              `look-up or build: no cluster made (${e instanceof Error ? e.message : e})`,
          );
        }
        log(`database: no initdb template (${e instanceof Error ? e.message : e}), running initdb`);
        return null;
      });
    initdbTemplateKey = template?.key ?? null;
    // A template made from a cluster of this initdb template (the stack's migrated one), when there is one.
    const derived = template && options.derivedTemplate;
    const derivedDir = derived
      ? await derived.find(template.key).catch((e) => {
        log(
          `database: no ${derived.name} template (${
            e instanceof Error ? e.message : e
          }), copying the initdb ` +
            `template`,
        );
        return null;
      })
      : null;
    if (options.restoreOf !== undefined) {
      // As the cluster's OS user, so the copy is its own (and 0700, as PostgreSQL insists).
      const backup = cmd("pg_basebackup", [
        "-d",
        options.restoreOf,
        "-D",
        pgdata,
        "-X",
        "stream",
        "-c",
        "fast",
      ]);
      await timed(
        options.onPhase,
        "database: base backup (pg_basebackup)",
        () => exec(backup.cmd, backup.args, stepTimeoutMs),
      );
      // Archive recovery to the end of the backup (the WAL it streamed), then promotion: a new timeline.
      const settings = "restore_command = 'false'\nrecovery_target = 'immediate'\n" +
        "recovery_target_action = 'promote'\n";
      await Deno.writeTextFile(`${pgdata}/postgresql.auto.conf`, settings, { append: true });
      await Deno.writeTextFile(`${pgdata}/recovery.signal`, "");
      if (isRoot()) {
        const { uid, gid } = await ensureOsUser();
        await Deno.chown(`${pgdata}/recovery.signal`, uid, gid);
      }
    } else if (derived && derivedDir) {
      await timed(
        options.onPhase,
        `database: ${derived.name} template copied (cp -a)`,
        () => exec("cp", ["-a", derivedDir, pgdata], stepTimeoutMs),
      ).catch(async (error) => {
        if (abandoned) throw error;
        // Removed between its look-up and this copy (another start pruned it) or unreadable: what was copied
        // of it goes, and the initdb template is copied instead, as when there is none.
        log(
          `database: ${derived.name} template not copied (${
            error instanceof Error ? error.message : error
          }), copying the initdb template`,
        );
        derived.notCopied();
        await Deno.remove(pgdata, { recursive: true }).catch(() => {});
        await timed(
          options.onPhase,
          "database: template copied (cp -a)",
          () => exec("cp", ["-a", template.dataDir, pgdata], stepTimeoutMs),
        );
      });
    } else if (template) {
      // cp -a keeps the owner (the cluster's OS user) and the 0700 mode PostgreSQL insists on.
      await timed(
        options.onPhase,
        "database: template copied (cp -a)",
        () => exec("cp", ["-a", template.dataDir, pgdata], stepTimeoutMs),
      );
    } else {
      await timed(options.onPhase, "database: initdb", () => initdbInto(pgdata));
    }

    const server = (port: number) =>
      cmd("postgres", [
        "-D",
        pgdata,
        "-p",
        String(port),
        "-k",
        dataDir,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "wal_level=logical",
        "-c",
        "max_connections=300",
        "-c",
        "shared_buffers=256MB",
        "-c",
        "log_min_messages=fatal",
        // Supabase databases run in UTC, whatever the developer's machine: realtime.messages is
        // partitioned by the UTC day of inserted_at, a timestamp without time zone taken from now().
        "-c",
        "timezone=UTC",
        // Throwaway cluster: durability is not wanted, speed is (benchmarks say so beside their numbers).
        // With asynchronous commit, logical decoding only streams WAL once the WAL writer has flushed
        // it (every wal_writer_delay, 200 ms by default): 1 ms keeps the local Realtime endpoint's
        // delivery from the WAL (local/realtime/wal.ts) prompt without paying a flush per commit.
        ...(options.durable ? [] : [
          "-c",
          "fsync=off",
          "-c",
          "synchronous_commit=off",
          "-c",
          "wal_writer_delay=1ms",
          "-c",
          "full_page_writes=off",
        ]),
      ]);
    // Ready once pg_isready answers; a restored cluster answers (read-only) while it recovers, and is
    // ready once it has been promoted. The start (and the recovery) has readyTimeoutMs in all. A probe
    // (pg_isready, psql) that does not answer within what is left of it is killed and counts as "not
    // ready": the start then fails for the deadline, not for the probe's own (shorter) time.
    const readyTimeoutMs = options.readyTimeoutMs ?? stepTimeoutMs;
    const restored = options.restoreOf !== undefined
      ? `the restored cluster (a base backup of ${options.restoreOf})`
      : null;
    /** Starts the server on `port`: null once it is ready, or its stderr when it exited before. */
    const launch = async (port: number): Promise<string | null> => {
      const started = server(port);
      const postmaster = child = new Deno.Command(started.cmd, {
        args: started.args,
        stdout: "null",
        stderr: "piped",
      }).spawn();
      const stderrChunks: string[] = [];
      const stderrRead = (async () => {
        for await (const chunk of postmaster.stderr.pipeThrough(new TextDecoderStream())) {
          stderrChunks.push(chunk);
        }
      })().catch(() => {});

      // The directory is the script's $1, not spliced into its text: a TMPDIR with a quote in it (a home
      // directory's name, "O'Brien") broke the quoting, and sh refused the whole script, so a process
      // killed outright left its cluster running and its directory behind.
      watchdog = new Deno.Command("setsid", {
        args: [
          "sh",
          "-c",
          `trap '' INT HUP; while kill -0 ${Deno.pid} 2>/dev/null; do sleep 1; done; ` +
          `kill -INT ${postmaster.pid} 2>/dev/null; for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 ${postmaster.pid} 2>/dev/null || break; sleep 0.5; done; ` +
          `kill -KILL ${postmaster.pid} 2>/dev/null; rm -rf -- "$1"`,
          "readsync-pg-watchdog",
          dataDir,
        ],
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      watchdog.unref();

      const deadline = Date.now() + readyTimeoutMs;
      let exited = false;
      postmaster.status.then(() => (exited = true));
      // Through the server's own socket in dataDir, not TCP: another server on this port (one that took
      // it first) cannot answer for ours. Ours has its TCP listener once it answers there (postgres
      // binds TCP first, and exits if it cannot).
      const asPostgres = ["-h", dataDir, "-p", String(port), "-U", "postgres"];
      let unanswered = "";
      /** The probe's result, or null (and `unanswered` says so) when it was killed for its time. */
      const probe = async (bin: string, args: string[]) => {
        const left = Math.max(1_000, deadline - Date.now());
        try {
          unanswered = "";
          return await run(`${bins.binDir}/${bin}`, [...asPostgres, ...args], left);
        } catch (error) {
          if (!(error instanceof StepTimedOut)) throw error;
          unanswered = ` (the last ${bin} did not answer within ${(left / 1000).toFixed(1)} s)`;
          return null;
        }
      };
      while (true) {
        const ready = (await probe("pg_isready", ["-q"]))?.success === true;
        const promoted = !ready || !restored ||
          (await probe("psql", ["-XAtc", "select pg_is_in_recovery()"]))?.stdout.trim() === "f";
        if (ready && promoted && !exited) return null;
        if (exited) {
          // Its last words (a FATAL) may still be on their way: the rest of its stderr, for at most 5 s.
          let waited: ReturnType<typeof setTimeout> | undefined;
          await Promise.race([stderrRead, new Promise((r) => waited = setTimeout(r, 5_000))]);
          clearTimeout(waited);
          return stderrChunks.join("");
        }
        if (Date.now() >= deadline) {
          throw new Error(
            `${restored ?? "PostgreSQL"} was not ${restored ? "out of recovery" : "ready"} on port ${port} ` +
              `within ${readyTimeoutMs / 1000} s${unanswered}:\n${stderrChunks.join("")}`,
          );
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    };

    relaunch = launch;
    const taken: number[] = [];
    for (let attempt = 1;; attempt++) {
      port = options.port ?? await (options.pickPort ?? freePort)();
      if (abandoned) {
        throw new Error(
          `the PostgreSQL start was torn down (a stop, or the end of a run) before it launched a server on ` +
            `port ${port}: none launched`,
        );
      }
      const exitedWith = await timed(
        options.onPhase,
        `database: server start (launch until pg_isready answers${
          attempt > 1 ? `, attempt ${attempt}` : ""
        })`,
        () => launch(port),
      );
      if (exitedWith === null) break;
      // With log_min_messages=fatal only the FATAL is printed, not the bind's "Address already in use".
      if (!picked || !/could not create any TCP\/IP sockets|Address already in use/.test(exitedWith)) {
        throw new Error(
          `${restored ?? "PostgreSQL"} exited before it was ready on port ${port}:\n${exitedWith}`,
        );
      }
      // The port was taken between the pick and the bind: this attempt's server has exited; its watchdog
      // goes too, and the data directory (which the server never used) is started on another port.
      taken.push(port);
      await child!.status;
      try {
        watchdog!.kill("SIGKILL");
      } catch { /* gone */ }
      await watchdog!.status;
      if (attempt >= PORT_ATTEMPTS) {
        throw new Error(
          `PostgreSQL could not listen on a free port in ${PORT_ATTEMPTS} attempts: ports ${
            taken.join(", ")
          } ` +
            `were each taken by another process before it could bind them:\n${exitedWith}`,
        );
      }
      log(`database: port ${port} was taken before PostgreSQL could bind it; starting it on another`);
    }
  } catch (error) {
    await options.beforeTearDown?.();
    // Forgotten only once it has run, not before: a run-down (a stop) that begins meanwhile finds it still
    // registered and waits for the same tear-down, instead of finding nothing left and exiting before the
    // directory is removed (a start failing of the stop raced the run-down so).
    await abandon();
    forgetAbandon();
    throw error;
  }

  forgetAbandon();
  const url = `postgresql://postgres:postgres@127.0.0.1:${port}/postgres`;
  let stopped: Promise<void> | null = null;
  // A copyStopped under way: a stop waits for it (and it starts no server once a stop has begun).
  let copying: Promise<void> | null = null;
  // Registered while the cluster runs (Ctrl-C, the end of a test run), removed again by a stop: a
  // process that starts and stops clusters over and over (the benchmarks) keeps none of them. Removed once
  // the stop has run, not as it begins: a run-down (a stop) that begins meanwhile still finds it and waits
  // for the same stop, instead of exiting before the server has stopped and its directory is removed.
  let forgetStop = () => {};
  const stop = () =>
    stopped ??= (async () => {
      await copying?.catch(() => {});
      // The server and watchdog of the last launch (copyStopped's restart launches them anew).
      await endServer(child!, "SIGINT"); // fast shutdown
      await Deno.remove(dataDir, { recursive: true }).catch(() => {});
      try {
        watchdog!.kill("SIGKILL");
      } catch { /* gone */ }
      forgetStop();
    })();
  forgetStop = onCleanup(stop);
  const copyStopped = (into: string) => {
    if (copying) throw new Error("a copy of this cluster is already under way");
    return copying = (async () => {
      if (stopped) throw new Error("the cluster was stopped: nothing to copy");
      const slots = [...Deno.readDirSync(`${dataDir}/data/pg_replslot`)].map((entry) => entry.name);
      if (slots.length > 0) {
        throw new Error(
          `the cluster has replication slots (${slots.join(", ")}): a copy would hold them too`,
        );
      }
      const [server, guard] = [child!, watchdog!];
      await endServer(server, "SIGINT"); // fast shutdown: a shutdown checkpoint, then the server ends
      let copyError: unknown = null;
      try {
        await exec("cp", ["-a", `${dataDir}/data`, into], stepTimeoutMs);
      } catch (error) {
        copyError = error;
      }
      // A stop or run-down that began meanwhile (Ctrl-C: its stop waits for this copy) finds the server ended:
      // none is started (a run-down would end each of its readiness probes as it began).
      const exitedWith = stopped || cleanupsBegun()
        ? "the cluster was stopped during the copy"
        : await relaunch!(port).catch((e) => String(e instanceof Error ? e.message : e));
      // The old server's watchdog goes once the new one has its own (a process killed meanwhile left the
      // directory to it).
      try {
        guard.kill("SIGKILL");
      } catch { /* gone */ }
      if (exitedWith !== null) {
        throw new ServerNotRestarted(
          `PostgreSQL did not start again on port ${port} after its data directory was copied:\n${exitedWith}`,
        );
      }
      if (copyError) throw copyError;
    })().finally(() => copying = null);
  };
  return { url, port, dataDir, initdbTemplateKey, copyStopped, stop };
}
