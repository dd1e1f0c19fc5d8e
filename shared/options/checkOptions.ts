// Checks of numeric options, shared by the function's body limits (shared/http/body.ts), the API
// client (shared/progress/api.ts) and RealtimeService (shared/realtime/realtimeService.ts). Each
// option's range is data (a NumberRule); a refusal reads the same everywhere, naming the option:
//
//   <where> option <name> must be <what the rule takes> (got <the value>)
//
// (an environment variable's text: `<where> environment variable <name>`; a required argument:
// `<where> argument <name>`)
//
// A value of the wrong type (not a number; for an object option, not a plain object: null, an array, a
// Map or a class instance too; for a function option, not a function; for a token, not a non-empty
// string) is a TypeError, a number out of range a RangeError. A value given as undefined is not given (its
// default applies): nothing here refuses it but a required argument.

/** The longest delay setTimeout keeps (2^31-1 ms, 24.8 days); past it a timer fires after 1 ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The numbers an option takes: from `min` (or above it) to `max`, and 0 or Infinity when said. */
export interface NumberRule {
  /** The least number taken, or with `aboveMin`, the number all taken are above. */
  readonly min: number;
  readonly aboveMin?: boolean;
  /** The largest finite number taken (a timer's delay: MAX_TIMER_MS). */
  readonly max: number;
  /** Whole numbers only. */
  readonly whole?: boolean;
  /** 0 is taken too, though below `min` (it turns the thing off, or means "at once"). */
  readonly zero?: boolean;
  /** Infinity is taken too ("never", "no bound"). */
  readonly infinity?: boolean;
  /** What the number counts, in the message ("a number of milliseconds"). */
  readonly unit?: "milliseconds" | "bytes";
}

/** A delay a timer can hold: 1 to MAX_TIMER_MS ms (below 1 fires at once; past the max after 1 ms). */
export const TIMER_MS: NumberRule = { min: 1, max: MAX_TIMER_MS, unit: "milliseconds" };

/** Whether `rule` takes the number `value` (NaN never: every comparison with it is false). */
function takesNumber(rule: NumberRule, value: number): boolean {
  if ((value === 0 && rule.zero) || (value === Infinity && rule.infinity)) return true;
  return (rule.aboveMin ? value > rule.min : value >= rule.min) && value <= rule.max &&
    (!rule.whole || Number.isInteger(value));
}

/** The rule in words: "a number of milliseconds from 1 to 2147483647, or 0 or Infinity". */
function describeRule(rule: NumberRule): string {
  const what = `a ${rule.whole ? "whole number" : "number"}${rule.unit ? ` of ${rule.unit}` : ""}`;
  const range = rule.aboveMin ? `above ${rule.min} and up to ${rule.max}` : `from ${rule.min} to ${rule.max}`;
  const also = [rule.zero && rule.min > 0 ? "0" : "", rule.infinity ? "Infinity" : ""].filter((s) => s);
  return `${what} ${range}${also.length ? `, or ${also.join(" or ")}` : ""}`;
}

/** A refused value, as a message shows it: a number as it prints, a short string quoted, else its kind. */
function shownValue(value: unknown): string {
  if (typeof value === "string") return value.length <= 40 ? JSON.stringify(value) : "a long string";
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "symbol") return "a symbol";
  if (typeof value === "function") return "a function";
  if (Array.isArray(value)) return "an array";
  if (value !== null && typeof value === "object") {
    if (isPlainObject(value)) return "an object";
    // A class's instance by its class ("a Map", "a Headers"), as far as its constructor says.
    const name = (Object.getPrototypeOf(value) as { constructor?: { name?: unknown } }).constructor?.name;
    return typeof name === "string" && /^[A-Za-z_$][\w$]{0,39}$/.test(name)
      ? `${/^[AEIOU]/.test(name) ? "an" : "a"} ${name}`
      : "an object that is not plain";
  }
  return String(value);
}

/**
 * Whether `value` is a plain object: made by `{...}` or Object.create(null), not an array, a Map, a
 * Headers, a Date or any other class's instance, whose state is not its own enumerable fields.
 */
export function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== "object") return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * `value` when `rule` takes it (undefined as well: not given); otherwise throws, naming the option as
 * `<where> option <name>`.
 */
export function checkNumberOption(value: number, rule: NumberRule, where: string, name: string): number;
export function checkNumberOption(
  value: unknown,
  rule: NumberRule,
  where: string,
  name: string,
): number | undefined;
export function checkNumberOption(
  value: unknown,
  rule: NumberRule,
  where: string,
  name: string,
): number | undefined {
  if (value === undefined || (typeof value === "number" && takesNumber(rule, value))) return value;
  const ErrorClass = typeof value === "number" ? RangeError : TypeError;
  throw new ErrorClass(`${where} option ${name} must be ${describeRule(rule)} (got ${shownValue(value)})`);
}

/**
 * How an environment variable's text may write a number: decimal digits, with a "-" before them and a
 * fraction after them when need be ("5", "-1", "2.5"), or Infinity; no leading zero but a lone "0"
 * before the point ("0", "0.5"; not "007" or "00.5"). Not every text Number() reads: "0x10", "0b11" and
 * "0o7" (16, 3, 7), "1e1" (10), "+5", ".5" and "5." are no such number, nor is "010", which a shell's
 * arithmetic, C and YAML 1.1 read as octal 8 and Number() as 10, so a value an operator wrote one way
 * is never taken as another they did not mean.
 */
const DECIMAL_TEXT = /^-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]+)?|Infinity)$/;
/**
 * The same for a rule taking whole numbers only: no fraction either ("5", "-1", "0"; not "5.0", "2.5"),
 * so the text is the number's own digits, one way of writing each number.
 */
const WHOLE_TEXT = /^-?(?:0|[1-9][0-9]*|Infinity)$/;

/**
 * The number an environment variable's text gives when it is written as `rule` takes numbers
 * (DECIMAL_TEXT, or for a whole-number rule WHOLE_TEXT) and `rule` takes it (surrounding spaces
 * ignored), or undefined when it is not set or is empty (spaces only too), as an empty secret is not
 * set; otherwise throws `<where> environment variable <name> must be <rule>, written in decimal digits
 * [without a fraction or] leading zeros (got "<the text>")`: a TypeError for a text not so written
 * ("abc", "5 connections", "0x10", "1e1", "007"; for a whole-number rule "5.0" and "2.5" too), a
 * RangeError for a number out of the range ("0", "-1", "Infinity").
 */
export function checkEnvNumber(
  text: string | undefined,
  rule: NumberRule,
  where: string,
  name: string,
): number | undefined {
  const trimmed = text?.trim();
  if (!trimmed) return undefined;
  const written = (rule.whole ? WHOLE_TEXT : DECIMAL_TEXT).test(trimmed);
  const value = written ? Number(trimmed) : NaN;
  if (takesNumber(rule, value)) return value;
  const ErrorClass = written ? RangeError : TypeError;
  throw new ErrorClass(
    `${where} environment variable ${name} must be ${describeRule(rule)}, written in decimal digits ` +
      `without ${rule.whole ? "a fraction or " : ""}leading zeros (got ${shownValue(text)})`,
  );
}

/**
 * Throws a TypeError unless `value` is a plain object (isPlainObject; or undefined: not given), naming
 * it as `<where> <kind> <name>` (kind "option" unless said). Its fields are read as options (and a
 * shared service's compared by them: subscribeToProgress), so null, an array, a Map, a Headers, a Date
 * or a class's instance is refused: such a value was taken with its fields read as not given (a Map's
 * or a Headers' entries are no fields), or, for a class's own fields or getters, read by one check and
 * not by another.
 */
export function checkObjectOption(
  value: unknown,
  where: string,
  name: string,
  how: { kind?: string } = {},
): void {
  if (value === undefined || isPlainObject(value)) return;
  throw new TypeError(
    `${where} ${how.kind ?? "option"} ${name} must be a plain object (got ${shownValue(value)})`,
  );
}

/**
 * Throws a TypeError unless `value` is a plain object (as checkObjectOption) whose every field is a
 * string (or `value` is undefined: not given), naming a field as `<where> option <name>.<field>`:
 * fields sent as they are, such as a request's headers, which fetch turns into text whatever they
 * are (a number its digits, an object "[object Object]", undefined "undefined").
 */
export function checkStringFieldsOption(value: unknown, where: string, name: string): void {
  checkObjectOption(value, where, name);
  if (value === undefined) return;
  for (const [field, fieldValue] of Object.entries(value as Record<string, unknown>)) {
    if (typeof fieldValue === "string") continue;
    throw new TypeError(`${where} option ${name}.${field} must be a string (got ${shownValue(fieldValue)})`);
  }
}

/**
 * Throws a TypeError unless `value` is headers a request can carry (or undefined: not given): a plain
 * object of strings (checkStringFieldsOption), each field a header that the Fetch spec's Headers takes,
 * as `new Headers()` in the runtime judges it (the same check fetch makes as it sends). A name must be
 * a token (one or more of the letters, digits and !#$%&'*+-.^_`|~: no space, colon, CR or LF, no
 * other character); a value may hold no NUL, no CR or LF but at either end (Headers strips a value's
 * leading and trailing spaces, tabs, CRs and LFs: a token read with its newline is taken without it)
 * and no character above U+00FF.
 * Unchecked, such a header reached fetch at every call, whose TypeError functions-js reported as a
 * failed fetch: a network_error, retried, its message quoting the value. The field's name is shown in
 * the message, its value is not (a header may carry a secret: an Authorization, an apikey).
 */
export function checkHeadersOption(value: unknown, where: string, name: string): void {
  checkStringFieldsOption(value, where, name);
  if (value === undefined) return;
  for (const [field, fieldValue] of Object.entries(value as Record<string, string>)) {
    if (headersTake(field, fieldValue)) continue;
    if (!headersTake(field, "")) {
      throw new TypeError(
        `${where} option ${name} has a field whose name is no header name (got ${shownValue(field)}): ` +
          "a header name is one or more of the letters, digits and !#$%&'*+-.^_`|~",
      );
    }
    throw new TypeError(
      `${where} option ${name}.${field} must be a header value: no NUL, CR or LF within it and no ` +
        "character above U+00FF (the string given has one; not shown, as a header may carry a secret)",
    );
  }
}

/** Whether the runtime's Headers takes the header `name: value` (it throws a TypeError if not). */
function headersTake(name: string, value: string): boolean {
  try {
    new Headers([[name, value]]);
    return true;
  } catch (error) {
    if (error instanceof TypeError) return false;
    throw error;
  }
}

/**
 * Throws a TypeError unless `value` is a function (or undefined: not given, unless `required`), naming
 * it as `<where> <kind> <name>` (kind "option" unless said: a handler or listener is an "argument"), the
 * value by its type ("must be a function (got object)"). A callback is called later, often in a timer
 * or a socket's message handler, where a value that is no function would throw where no caller can
 * catch it (or be logged and lost): refused here, by the call that takes it.
 */
export function checkFunctionOption(
  value: unknown,
  where: string,
  name: string,
  how: { kind?: string; required?: boolean } = {},
): void {
  if ((value === undefined && !how.required) || typeof value === "function") return;
  throw new TypeError(`${where} ${how.kind ?? "option"} ${name} must be a function (got ${typeof value})`);
}

/**
 * What a caught value says, for a log line, never throwing: as String() prints it ("Error: boom"), or
 * with `form` "message" an Error's message alone ("boom"). A callback may throw anything, also a value
 * String() cannot print (an object without a prototype, one whose toString throws), and the catch that
 * logs it must not throw in its turn (it would break what the catch was there to protect).
 */
export function describeError(error: unknown, form: "text" | "message" = "text"): string {
  try {
    return form === "message" && error instanceof Error ? String(error.message) : String(error);
  } catch {
    try {
      return Object.prototype.toString.call(error);
    } catch {
      return "an error that cannot be shown";
    }
  }
}

/**
 * Throws a TypeError unless `value` is a string of at least one character (or undefined: not given,
 * unless `required`), naming it as `<where> <kind> <name>` (kind "option" unless said): a token. The
 * empty string is no token, refused as null is, since a caller could mean it as "no token" or as "the
 * token is gone"; a string taken is never shown (a token is a secret), nor a long one refused.
 */
export function checkTokenOption(
  value: unknown,
  where: string,
  name: string,
  how: { kind?: string; required?: boolean } = {},
): void {
  if ((value === undefined && !how.required) || (typeof value === "string" && value !== "")) return;
  throw new TypeError(
    `${where} ${how.kind ?? "option"} ${name} must be a non-empty string (got ${shownValue(value)})`,
  );
}

/**
 * Throws a TypeError unless `value` is true or false (or undefined: not given), naming it as
 * `<where> option <name>`: a switch read with `??` and then as a condition, where a string ("false"),
 * 1 or null would be taken as whatever its truthiness says.
 */
export function checkBooleanOption(value: unknown, where: string, name: string): void {
  if (value === undefined || typeof value === "boolean") return;
  throw new TypeError(`${where} option ${name} must be true or false (got ${shownValue(value)})`);
}

/**
 * Throws a TypeError unless `value` is one of the strings `choices` (or undefined: not given), naming it
 * as `<where> option <name>`: a setting a comparison reads, where any other value silently meant the
 * choice the comparison falls through to.
 */
export function checkChoiceOption(
  value: unknown,
  choices: readonly string[],
  where: string,
  name: string,
): void {
  if (value === undefined || (typeof value === "string" && choices.includes(value))) return;
  const listed = choices.map((choice) => JSON.stringify(choice)).join(" or ");
  throw new TypeError(`${where} option ${name} must be ${listed} (got ${shownValue(value)})`);
}

/**
 * Throws a TypeError unless `value` is null or a string `format` takes (or undefined: not given),
 * naming the option as above and saying what it must be (`what`): a cursor an API handed out, which
 * an app persists and gives back, refused here rather than by every request made with it.
 */
export function checkCursorOption(
  value: unknown,
  format: RegExp,
  what: string,
  where: string,
  name: string,
): void {
  if (value === undefined || value === null || (typeof value === "string" && format.test(value))) return;
  throw new TypeError(`${where} option ${name} must be ${what}, or null (got ${shownValue(value)})`);
}

/** The largest number below 1 (1 - 2^-53): a draw of 1 or more is taken as this. */
export const LARGEST_BELOW_ONE = 1 - Number.EPSILON / 2;

/**
 * A draw of a `random` option (a function meant to return a number in [0, 1), as Math.random does)
 * taken into [0, 1), so that no wait drawn from it is NaN (setTimeout fires a NaN wait at once) or
 * outside its range: below 0 as 0, 1 or more as LARGEST_BELOW_ONE (the longest wait), NaN or a
 * non-number as 0.5 (the mean wait). RealtimeService's waits and the API client's retries both take
 * their draws through it.
 */
export function drawInRange(value: unknown): number {
  if (typeof value === "number" && value >= 0 && value < 1) return value;
  if (typeof value !== "number" || Number.isNaN(value)) return 0.5;
  return value < 0 ? 0 : LARGEST_BELOW_ONE;
}

/** Each field of `defaults` as given in `given`, or the default when not given (undefined or null). */
export function withDefaults<T extends object>(
  given: { readonly [K in keyof T]?: T[K] } | undefined,
  defaults: T,
): T {
  const out = { ...defaults };
  for (const key of Object.keys(defaults) as (keyof T)[]) out[key] = given?.[key] ?? defaults[key];
  return out;
}
