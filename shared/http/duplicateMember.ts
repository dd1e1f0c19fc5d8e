// Finding a member name given twice in one JSON object. RFC 8259 (4) says names SHOULD be unique and
// that parsers differ on duplicates: JSON.parse keeps the last, others the first or fail. A body
// with `"chapter": 1, "chapter": 7` would be stored as chapter 7 here and may have been read as
// chapter 1 by whatever checked it on the way, so the API refuses it instead of guessing.

/** Where a duplicated member is: the path of its object (keys and array indexes), and its name. */
export interface DuplicateMember {
  path: (string | number)[];
  name: string;
}

interface Frame {
  /** Member names seen so far; null for an array. */
  names: Set<string> | null;
  /** The next string in this object is a member name (after `{` or `,`). */
  expectName: boolean;
  /** The current member name (object) or element index (array): the path segment of a child. */
  segment: string | number;
}

/**
 * The first member name that occurs twice in one object of `text`, or null. `text` must be JSON that
 * JSON.parse accepted: this is a scanner over its tokens (strings skipped as a whole, so a `{` or a
 * `"` in a string value is no structure), not a parser. Names compare after unescaping
 * (`"chapter"` and `"chap\u0074er"` are the same name), as JSON.parse compares them.
 */
export function findDuplicateMember(text: string): DuplicateMember | null {
  const stack: Frame[] = [];
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let end = i + 1;
      let escaped = false;
      for (let d = text.charCodeAt(end); d !== 0x22; d = text.charCodeAt(end)) {
        if (d === 0x5c /* \ */) {
          escaped = true;
          end += 2;
        } else {
          end += 1;
        }
      }
      const top = stack[stack.length - 1];
      if (top !== undefined && top.names !== null && top.expectName) {
        const name: string = escaped ? JSON.parse(text.slice(i, end + 1)) : text.slice(i + 1, end);
        if (top.names.has(name)) return { path: stack.slice(0, -1).map((f) => f.segment), name };
        top.names.add(name);
        top.segment = name;
        top.expectName = false;
      }
      i = end;
    } else if (c === 0x7b /* { */) {
      stack.push({ names: new Set(), expectName: true, segment: "" });
    } else if (c === 0x5b /* [ */) {
      stack.push({ names: null, expectName: false, segment: 0 });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top.names !== null) top.expectName = true;
      else top.segment = (top.segment as number) + 1;
    }
  }
  return null;
}
