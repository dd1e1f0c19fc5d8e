// System pieces the local stack needs from Debian, found or installed (as root) in one place.

export const REQUIRED_APT_PACKAGES = [
  "postgresql-15",
  "postgresql-15-pgtap",
  "libtap-parser-sourcehandler-pgtap-perl",
  "postgresql-15-plpgsql-check",
] as const;

export interface PostgresBinaries {
  binDir: string;
  shareDir: string;
}

export function isRoot(): boolean {
  return Deno.uid() === 0;
}

async function run(cmd: string, args: string[], opts: { quiet?: boolean } = {}) {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (!out.success && !opts.quiet) throw new Error(`${cmd} ${args.join(" ")} failed:\n${text}`);
  return { ok: out.success, text };
}

export async function commandExists(name: string): Promise<boolean> {
  return (await run("sh", ["-c", `command -v ${name}`], { quiet: true })).ok;
}

/** Whether anything is at `path` (file or directory). */
export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** PostgreSQL server binaries: PATH first, then the newest /usr/lib/postgresql/<major>/bin. */
export function findPostgresBinaries(): PostgresBinaries | null {
  const candidates: string[] = [];
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir) candidates.push(dir);
  }
  try {
    const majors = [...Deno.readDirSync("/usr/lib/postgresql")]
      .map((e) => e.name)
      .filter((n) => /^\d+$/.test(n))
      .sort((a, b) => Number(b) - Number(a));
    // Prefer 15: the version the apt packages above (pgTAP, plpgsql_check) are built for.
    majors.sort((a, b) => (a === "15" ? -1 : b === "15" ? 1 : 0));
    for (const m of majors) candidates.push(`/usr/lib/postgresql/${m}/bin`);
  } catch { /* no Debian layout */ }
  for (const binDir of candidates) {
    if (["initdb", "postgres", "pg_isready"].every((bin) => exists(`${binDir}/${bin}`))) {
      const major = binDir.match(/postgresql\/(\d+)\//)?.[1] ?? "15";
      return { binDir, shareDir: `/usr/share/postgresql/${major}` };
    }
  }
  return null;
}

function missingPieces(): string[] {
  const missing: string[] = [];
  const pg = findPostgresBinaries();
  if (!pg) missing.push("postgresql-15");
  const share = pg?.shareDir ?? "/usr/share/postgresql/15";
  if (!exists(`${share}/extension/pgtap.control`)) missing.push("postgresql-15-pgtap");
  if (!exists(`${share}/extension/plpgsql_check.control`)) missing.push("postgresql-15-plpgsql-check");
  if (!exists("/usr/bin/pg_prove")) missing.push("libtap-parser-sourcehandler-pgtap-perl");
  return missing;
}

/**
 * Makes sure PostgreSQL 15, pgTAP, pg_prove and plpgsql_check are present. As root they are
 * installed with apt; otherwise one message says exactly what to install.
 */
export async function ensureSystemPackages(log: (line: string) => void = console.log): Promise<void> {
  const missing = missingPieces();
  if (missing.length === 0) return;
  const installLine = `apt-get install -y ${REQUIRED_APT_PACKAGES.join(" ")}`;
  if (!isRoot()) {
    throw new Error(
      `Missing system packages: ${missing.join(", ")}. Install them with:\n  sudo ${installLine}`,
    );
  }
  log(`installing ${missing.join(", ")} with apt-get`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  const install = () =>
    new Deno.Command("apt-get", {
      args: ["install", "-y", "-q", "--no-install-recommends", ...REQUIRED_APT_PACKAGES],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
  let result = await install();
  if (!result.success) {
    await new Deno.Command("apt-get", { args: ["update", "-q"], env, stdout: "null", stderr: "null" })
      .output();
    result = await install();
  }
  const still = missingPieces();
  if (!result.success || still.length > 0) {
    throw new Error(
      `apt-get could not install ${still.join(", ")}:\n${new TextDecoder().decode(result.stderr)}`,
    );
  }
}
