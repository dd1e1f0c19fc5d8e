// Media types in headers (RFC 9110, 8.3.1): the parameters of a Content-Type. Names (type, subtype,
// parameter names) are case-insensitive, parameter values may be quoted strings, whitespace around `;`
// and `=` is allowed.

/** A list split on `sep`, except inside quoted strings (a `\` escapes the next character there). */
function splitOutsideQuotes(value: string, sep: string): string[] {
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
  return parts;
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
  const [type, ...rest] = splitOutsideQuotes(value, ";");
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
 * Every `charset` parameter of a Content-Type that does not name UTF-8, as given (unquoted). A label
 * names UTF-8 when the WHATWG Encoding Standard reads it as UTF-8 (what TextDecoder and browsers go by):
 * "utf-8" in any case, and its aliases "utf8", "unicode-1-1-utf-8" and the like.
 */
export function nonUtf8Charsets(contentType: string | null): string[] {
  if (!contentType) return [];
  return parseMediaType(contentType).parameters
    .filter(([name]) => name === "charset")
    .map(([, value]) => value)
    .filter((label) => {
      try {
        return new TextDecoder(label).encoding !== "utf-8";
      } catch {
        return true; // no encoding of that name at all
      }
    });
}
