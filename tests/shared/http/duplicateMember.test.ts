// findDuplicateMember: a member name given twice in one object, wherever it is, and nothing else.

import assert from "node:assert/strict";
import fc from "fast-check";
import { findDuplicateMember } from "../../../shared/http/duplicateMember.ts";

Deno.test("a name given twice is found with the path of its object, at any depth", () => {
  const cases: [string, { path: (string | number)[]; name: string } | null][] = [
    ['{"series_id":"s","chapter":1,"chapter":7}', { path: [], name: "chapter" }],
    ['{"writes":[{"a":1},{"a":1,"b":2,"a":3}]}', { path: ["writes", 1], name: "a" }],
    ['{"writes":[],"writes":[]}', { path: [], name: "writes" }],
    ['{"x":{"y":{"z":1,"z":2}}}', { path: ["x", "y"], name: "z" }],
    ['[0, [1, {"k": 1, "k": 1}]]', { path: [1, 1], name: "k" }],
    // Equal after unescaping, as JSON.parse compares names.
    ['{"chapter":1,"chap\\u0074er":7}', { path: [], name: "chapter" }],
    ['{ "a" : 1 ,\n "a" : 2 }', { path: [], name: "a" }],
    // Not duplicates: the same name in sibling or nested objects, names inside string values.
    ['{"a":{"a":1},"b":{"a":2}}', null],
    ['[{"a":1},{"a":2}]', null],
    ['{"a":"\\"a\\":1,{\\"a\\"","b":"}{[,"}', null],
    ['{"a":"x","b":"a"}', null],
    ['{"\\\\":1,"\\"":2}', null],
    ['"a"', null],
    ["{}", null],
  ];
  for (const [text, expected] of cases) {
    JSON.parse(text); // the scanner's precondition
    assert.deepEqual(findDuplicateMember(text), expected, text);
  }
});

Deno.test("JSON.stringify never repeats a name, and repeating one is always found", () => {
  fc.assert(
    fc.property(fc.jsonValue(), (value) => {
      assert.equal(findDuplicateMember(JSON.stringify(value)), null);
    }),
    { numRuns: 500 },
  );
  fc.assert(
    fc.property(
      fc.dictionary(fc.string(), fc.jsonValue(), { minKeys: 1 }),
      fc.nat(),
      fc.jsonValue(),
      (object, pick, extra) => {
        const names = Object.keys(object);
        const name = names[pick % names.length];
        const text = `{"wrap":[${JSON.stringify(object).slice(0, -1)},${JSON.stringify(name)}:${
          JSON.stringify(extra)
        }}]}`;
        assert.deepEqual(findDuplicateMember(text), { path: ["wrap", 0], name });
      },
    ),
    { numRuns: 500 },
  );
});
