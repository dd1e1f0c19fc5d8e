// shared/http/mediaType.ts: whether an Accept header admits the API's JSON (RFC 9110, 12.5.1), and which
// charset a Content-Type names. Over real HTTP: tests/functions/progress_errors.test.ts.

import assert from "node:assert/strict";
import { acceptsJson, nonUtf8Charsets, parseMediaType } from "../../../shared/http/mediaType.ts";

Deno.test("acceptsJson: q-values, case, whitespace and specificity; nothing readable admits everything", () => {
  const cases: [string | null, boolean][] = [
    [null, true],
    ["", true],
    ["*/*", true],
    ["application/*", true],
    ["application/json", true],
    ["Application/JSON", true],
    ["application/json; charset=utf-8", true],
    [" application/json ; q=1 ", true],
    ["text/html, application/json;q=0.1", true],
    ["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", true], // a browser's
    ["*/*;q=0, application/json", true], // the more specific range decides
    ["application/*;q=0, application/json;q=0.5", true],
    ["application/json;q=0.001", true],
    ["application/json;q=abc", true], // a weight that is no number is passed over
    ["application/json;q=2", true],
    ["garbage", true], // no media range at all: as if absent
    [",", true],
    ["*/json", true], // no media range either
    ["text/html", false],
    ["text/*", false],
    ["application/vnd.readsync+json", false],
    ["*/json, text/html", false],
    ["application/json;q=0", false],
    ["application/json ; Q=0.000", false],
    ["application/json;q=0, */*", false],
    ["application/*;q=0", false],
    ["*/*;q=0", false],
    ['application/json;foo="a,b";q=0', false], // a comma inside quotes does not split the list
    ['text/html;foo="x, application/json', true], // a quote never closed: unreadable, as if absent
    ['text/html;foo="x\\", application/json;q=0', true],
    ['text/html;foo="x\\"", application/json;q=0', false], // closed after an escaped quote
  ];
  for (const [header, expected] of cases) assert.equal(acceptsJson(header), expected, String(header));
});

Deno.test("nonUtf8Charsets: any label the Encoding Standard reads as UTF-8, and US-ASCII's names, pass, in any case, quoted or not", () => {
  const cases: [string | null, string[]][] = [
    [null, []],
    ["application/json", []],
    ["application/json; charset=utf-8", []],
    ["application/json;charset=UTF-8", []],
    ['application/json; Charset="utf-8"', []],
    ["application/json; charset=utf8", []],
    ["application/json; charset=us-ascii", []],
    ['application/json; charset="US-ASCII"', []],
    ["application/json; charset=ANSI_X3.4-1968", []],
    ["application/json; charset=windows-1252", ["windows-1252"]],
    ["application/json; charset=utf-16", ["utf-16"]],
    ['application/json; charset="UTF-16LE"', ["UTF-16LE"]],
    ["application/json; charset=iso-8859-1", ["iso-8859-1"]],
    ["application/json; charset=no-such-charset", ["no-such-charset"]],
    ["application/json; charset=", [""]],
    ["application/json; charset=utf-8; charset=utf-16", ["utf-16"]],
  ];
  for (const [header, expected] of cases) assert.deepEqual(nonUtf8Charsets(header), expected, String(header));
  assert.deepEqual(parseMediaType(' Application/JSON ; A="x;\\"y" ; b = 2 '), {
    type: "application/json",
    parameters: [["a", 'x;"y'], ["b", "2"]],
  });
});
