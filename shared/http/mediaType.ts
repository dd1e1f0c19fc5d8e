// Media types in headers (RFC 9110, 8.3.1 and 12.5.1): the parameters of a Content-Type, and whether an
// Accept header admits a JSON answer. Names (type, subtype, parameter names) are case-insensitive,
// parameter values may be quoted strings, whitespace around `;`, `,` and `=` is allowed.

/**
 * A list split on `sep`, except inside quoted strings (a `\` escapes the next character there); `open`
 * when a quoted string is never closed (it then runs to the end of the value).
 */
function splitOutsideQuotes(value: string, sep: string): { parts: string[]; open: boolean } {
  const parts: string[] = [];
  let current = "";
  let quoted = false;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (quoted && c === "\\" && i + 1 < value.length) {
      current += c + value[++i];
      continue;
    }
    if (c === '"') quoted = !quoted;
    if (c === sep && !quoted) {
      parts.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  parts.push(current);
  return { parts, open: quoted };
}

/** A parameter value without its quotes and escapes. */
function unquote(value: string): string {
  const v = value.trim();
  if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) return v.slice(1, -1).replace(/\\(.)/g, "$1");
  return v;
}

export interface MediaType {
  /** "type/subtype", lower-cased ("" when the header has none). */
  type: string;
  /** Parameters in order; names lower-cased, values unquoted (case kept). */
  parameters: [string, string][];
}

/** One media type (a Content-Type value, or one element of an Accept list). */
export function parseMediaType(value: string): MediaType {
  const [type, ...rest] = splitOutsideQuotes(value, ";").parts;
  const parameters: [string, string][] = [];
  for (const p of rest) {
    const eq = p.indexOf("=");
    if (eq < 0) continue; // a name without a value is no parameter: passed over
    const name = p.slice(0, eq).trim().toLowerCase();
    if (name !== "") parameters.push([name, unquote(p.slice(eq + 1))]);
  }
  return { type: type.trim().toLowerCase(), parameters };
}

/**
 * The IANA names of US-ASCII (RFC 20; IANA character sets registry). ASCII is a subset of UTF-8, so a
 * body so labelled reads the same as UTF-8 (the Encoding Standard maps these labels to windows-1252,
 * which is why TextDecoder alone would refuse them); a byte beyond ASCII is then read as UTF-8.
 */
const usAsciiLabels = new Set([
  "us-ascii",
  "ascii",
  "ansi_x3.4-1968",
  "ansi_x3.4-1986",
  "iso-ir-6",
  "iso_646.irv:1991",
  "iso646-us",
  "us",
  "ibm367",
  "cp367",
  "csascii",
]);

/**
 * Every `charset` parameter of a Content-Type that does not name UTF-8, as given (unquoted). A label
 * names UTF-8 when the WHATWG Encoding Standard reads it as UTF-8 (what TextDecoder and browsers go by):
 * "utf-8" in any case, and its aliases "utf8", "unicode-1-1-utf-8" and the like; US-ASCII's names pass
 * too (a subset of UTF-8: .NET's `Encoding.ASCII`, for one, labels JSON so).
 */
export function nonUtf8Charsets(contentType: string | null): string[] {
  if (!contentType) return [];
  return parseMediaType(contentType).parameters
    .filter(([name]) => name === "charset")
    .map(([, value]) => value)
    .filter((label) => {
      if (usAsciiLabels.has(label.trim().toLowerCase())) return false;
      try {
        return new TextDecoder(label).encoding !== "utf-8";
      } catch {
        return true; // no encoding of that name at all
      }
    });
}

/**
 * The weight of a `q` parameter (RFC 9110, 12.4.2: 0 to 1, at most three decimals). A weight that is no
 * such number is passed over (read as 1): an odd header is never a reason to refuse an answer.
 */
function weight(parameters: [string, string][]): number {
  const q = parameters.find(([name]) => name === "q")?.[1];
  if (q === undefined || !/^(?:0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?)$/.test(q)) return 1;
  return Number(q);
}

/**
 * Whether an Accept header admits `application/json` (RFC 9110, 12.5.1). No header, an empty one, one
 * with a quoted string never closed, or one with no element that reads as a media range admits everything. Otherwise the most specific range that
 * matches decides (`application/json` before `application/*` before the range of any type; parameters
 * other than q are not taken into account), and it admits JSON unless its weight is 0; no matching range
 * admits nothing.
 */
export function acceptsJson(accept: string | null): boolean {
  if (accept === null) return true;
  let best: { specificity: number; q: number } | null = null;
  let ranges = 0;
  const { parts, open } = splitOutsideQuotes(accept, ",");
  // A quoted string left open swallows the ranges after it (`text/html;a="x, application/json`): an
  // unreadable header, as if absent.
  if (open) return true;
  for (const element of parts) {
    if (element.trim() === "") continue;
    const { type, parameters } = parseMediaType(element);
    const m = /^([a-z0-9!#$%&'*+.^_`|~-]+)\/([a-z0-9!#$%&'*+.^_`|~-]+)$/.exec(type);
    if (!m || (m[1] === "*" && m[2] !== "*")) continue; // no media range ("*/json" is none either)
    ranges++;
    const specificity = type === "application/json"
      ? 3
      : type === "application/*"
      ? 2
      : type === "*/*"
      ? 1
      : 0;
    if (specificity === 0) continue;
    const q = weight(parameters);
    // The most specific range decides; of two equally specific ones the higher weight.
    if (!best || specificity > best.specificity || (specificity === best.specificity && q > best.q)) {
      best = { specificity, q };
    }
  }
  if (ranges === 0) return true;
  return best !== null && best.q > 0;
}
