// The [functions.<name>] sections of supabase/config.toml, read the way the Supabase CLI uses them
// for `supabase functions serve`: enabled (default true), verify_jwt (default true), entrypoint
// (default ./functions/<name>/index.ts), import_map. Paths are relative to the supabase/ directory.
//
// Only what those sections use is parsed: `key = value` with a string, boolean or number value
// (and comments). Other sections are skipped, so the rest of config.toml may use any TOML.

export interface FunctionConfig {
  name: string;
  enabled: boolean;
  verifyJwt: boolean;
  /** Absolute path of the entrypoint module. */
  entrypoint: string;
  /** Absolute path of the import map, if configured. */
  importMap?: string;
}

type Value = string | boolean | number;

function parseValue(raw: string): Value | undefined {
  const v = raw.trim();
  if (v === "true") return true;
  if (v === "false") return false;
  if (/^[+-]?\d+(\.\d+)?$/.test(v)) return Number(v);
  const dq = /^"((?:[^"\\]|\\.)*)"$/.exec(v);
  if (dq) return JSON.parse(`"${dq[1]}"`);
  const sq = /^'([^']*)'$/.exec(v);
  if (sq) return sq[1];
  return undefined;
}

function stripComment(line: string): string {
  let inString: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (inString) {
      if (c === "\\" && inString === '"') i++;
      else if (c === inString) inString = null;
    } else if (c === '"' || c === "'") inString = c;
    else if (c === "#") return line.slice(0, i);
  }
  return line;
}

/** Settings per function name, from the text of config.toml. */
export function parseFunctionSections(toml: string): Map<string, Record<string, Value>> {
  const sections = new Map<string, Record<string, Value>>();
  let current: Record<string, Value> | null = null;
  for (const rawLine of toml.split(/\r?\n/)) {
    const line = stripComment(rawLine).trim();
    if (!line) continue;
    const header = /^\[([^\[\]]+)\]$/.exec(line);
    if (header) {
      const m = /^functions\.("?)([A-Za-z0-9_-]+)\1$/.exec(header[1].trim());
      current = m ? sections.get(m[2]) ?? {} : null;
      if (m) sections.set(m[2], current!);
      continue;
    }
    if (line.startsWith("[")) {
      current = null; // [[array of tables]]
      continue;
    }
    if (!current) continue;
    const kv = /^([A-Za-z0-9_-]+)\s*=\s*(.+)$/.exec(line);
    if (!kv) continue;
    const value = parseValue(kv[2]);
    if (value !== undefined) current[kv[1]] = value;
  }
  return sections;
}

function join(dir: string, path: string): string {
  if (path.startsWith("/")) return path;
  const parts = `${dir.replace(/\/$/, "")}/${path}`.split("/");
  const out: string[] = [];
  for (const p of parts) {
    if (p === "..") out.pop();
    else if (p !== "." && p !== "") out.push(p);
  }
  return `/${out.join("/")}`;
}

/**
 * Every function of a supabase/ directory: each functions/<name>/ with an index.ts (names starting
 * with _ or . are shared code, not functions) plus every [functions.<name>] section.
 */
export async function loadFunctionConfigs(supabaseDir: string): Promise<FunctionConfig[]> {
  let toml = "";
  try {
    toml = await Deno.readTextFile(`${supabaseDir}/config.toml`);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  const sections = parseFunctionSections(toml);
  const names = new Set(sections.keys());
  try {
    for await (const entry of Deno.readDir(`${supabaseDir}/functions`)) {
      if (!entry.isDirectory || /^[_.]/.test(entry.name)) continue;
      try {
        await Deno.stat(`${supabaseDir}/functions/${entry.name}/index.ts`);
        names.add(entry.name);
      } catch { /* not a function directory */ }
    }
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return [...names].sort().map((name) => {
    const s = sections.get(name) ?? {};
    return {
      name,
      enabled: s.enabled !== false,
      verifyJwt: s.verify_jwt !== false,
      entrypoint: join(
        supabaseDir,
        typeof s.entrypoint === "string" ? s.entrypoint : `./functions/${name}/index.ts`,
      ),
      importMap: typeof s.import_map === "string" ? join(supabaseDir, s.import_map) : undefined,
    };
  });
}
