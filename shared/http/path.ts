// Percent-encoding in request paths.

const UNRESERVED_ESCAPE = /%(2[dDeE]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])/g;

/**
 * The path with every percent-encoded unreserved character (ALPHA, DIGIT, "-", ".", "_", "~") decoded:
 * RFC 3986, 6.2.2.2 makes `%62atch` and `batch` the same segment. Every other escape is kept as sent, so
 * an encoded slash (%2F) stays part of its segment and never becomes a separator, and an invalid escape
 * is left for the route that reads the segment to refuse.
 */
export function decodeUnreserved(path: string): string {
  return path.replace(UNRESERVED_ESCAPE, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}
