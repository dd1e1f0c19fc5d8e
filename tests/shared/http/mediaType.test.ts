// shared/http/mediaType.ts: which charset a Content-Type names. Over real HTTP:
// tests/functions/progress_errors.test.ts.

import assert from "node:assert/strict";
import { nonUtf8Charsets, parseMediaType } from "../../../shared/http/mediaType.ts";

Deno.test("nonUtf8Charsets: any label the Encoding Standard reads as UTF-8 passes, in any case, quoted or not", () => {
  const cases: [string | null, string[]][] = [
    [null, []],
    ["application/json", []],
    ["application/json; charset=utf-8", []],
    ["application/json;charset=UTF-8", []],
    ['application/json; Charset="utf-8"', []],
    ["application/json; charset=utf8", []],
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
