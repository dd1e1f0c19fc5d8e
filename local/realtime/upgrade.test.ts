// The reasons Phoenix's 400 gives for a request to the socket that is no WebSocket upgrade, with header
// values shown as Elixir's inspect/1 writes them (the endpoint's answers over HTTP: realtime-rls.test.ts).

import assert from "node:assert/strict";
import { elixirInspectList, upgradeRefusal } from "./upgrade.ts";

Deno.test("upgrade: header values are shown as Elixir's inspect/1 writes a list of binaries", () => {
  assert.equal(elixirInspectList([]), "[]");
  assert.equal(elixirInspectList(["13", "8"]), '["13", "8"]');
  // `"`, `\` and `#{` are escaped, a tab is \t; UTF-8 bytes (one char per byte, as Deno's Headers hold
  // them) are the characters they encode; bytes that are not UTF-8 are a binary.
  assert.equal(elixirInspectList(['a"b\\c#{d}#e\tf']), '["a\\"b\\\\c\\#{d}#e\\tf"]');
  assert.equal(elixirInspectList(["\xc3\xa9"]), '["é"]');
  assert.equal(elixirInspectList(["a\xff"]), "[<<97, 255>>]");
  assert.equal(elixirInspectList(["\xc2\x85"]), "[<<194, 133>>]", "U+0085 is not printable");
});

Deno.test("upgrade: the first of WebSockAdapter's checks that fails, over the headers Kong sends on", () => {
  const refusal = (headers: Record<string, string>) => upgradeRefusal(new Headers(headers));
  const keyed = { upgrade: "WebSocket", "sec-websocket-key": "k" };
  assert.equal(refusal({ ...keyed, "sec-websocket-version": "13" }), null);
  // Kong asks for the upgrade only for an Upgrade header that is `websocket` whole (any case).
  for (const upgrade of [undefined, "h2c", "websocket, h2c"]) {
    assert.equal(
      refusal(upgrade === undefined ? {} : { upgrade, connection: "upgrade" }),
      `'connection' header must contain 'upgrade', got ["keep-alive"]`,
      upgrade,
    );
  }
  assert.equal(refusal({ upgrade: "websocket" }), "'sec-websocket-key' header is absent");
  assert.equal(refusal(keyed), "'sec-websocket-version' header must equal '13', got []");
  assert.equal(
    refusal({ ...keyed, "sec-websocket-version": "13X" }),
    `'sec-websocket-version' header must equal '13', got ["13x"]`,
    "compared and shown lowercased",
  );
});
