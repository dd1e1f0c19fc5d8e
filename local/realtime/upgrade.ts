// What Supabase Realtime answers a request to its socket that is not a WebSocket upgrade, for
// endpoint.ts. On `supabase start` Kong sends /realtime/v1/websocket to Realtime's /socket/websocket
// (supabase/cli internal/start/templates/kong.yml), served by Phoenix's WebSocket transport
// (phoenixframework/phoenix lib/phoenix/transports/websocket.ex, Phoenix ~> 1.7 in supabase/realtime's
// mix.exs, on Cowboy through plug_cowboy):
// - `call/2` for a method other than GET: `send_resp(conn, 400, "")`, before the socket's connect.
// - for a GET: the socket's connect first (the serializer for `vsn`, then user_socket.ex's token check:
//   its refusals are 403, as endpoint.ts answers them), and once it has accepted,
//   `WebSockAdapter.upgrade/4`, which checks the request first (`early_validate_upgrade`, on by
//   default) with WebSockAdapter.UpgradeValidation (phoenixframework/websock_adapter
//   lib/websock_adapter/upgrade_validation.ex) and raises WebSockAdapter.UpgradeError with the
//   first check that fails; the transport rescues it as `send_resp(conn, 400, e.message)`: the
//   message as the body, with no Content-Type (Plug sets none), as upgradeRefusal gives it.
// The headers those checks read are the ones Kong sends on: Kong (kong/runloop/handler.lua, "Keep-Alive
// and WebSocket Protocol Upgrade Headers") sends `Connection: keep-alive, Upgrade` and `Upgrade: websocket`
// when the client's Upgrade is `websocket` (any case), otherwise `Connection: keep-alive` and no Upgrade
// (nginx drops the empty value), whatever the client sent; Host, Sec-WebSocket-Key and
// Sec-WebSocket-Version pass through as sent.

/**
 * The body of Phoenix's 400 for a GET to the socket that is no WebSocket upgrade (checked once the
 * socket's connect has accepted the request), or null for a request WebSockAdapter would upgrade.
 * UpgradeValidation's HTTP/1.1 checks, in its order, over the headers as Kong sends them on: the method
 * (GET: the caller has checked it); a Host (Kong always sends one); `connection` containing `upgrade`
 * and `upgrade` containing `websocket` (Kong's: both, or `keep-alive` and no Upgrade, so the first of
 * the two fails with `["keep-alive"]` or neither does); a Sec-WebSocket-Key; Sec-WebSocket-Version
 * equal to `13` (compared lowercased, and shown so).
 */
export function upgradeRefusal(headers: Headers): string | null {
  // Kong's `lower(upgrade) == "websocket"`: the whole value, not a list of protocols.
  if (headers.get("upgrade")?.toLowerCase() !== "websocket") {
    return `'connection' header must contain 'upgrade', got ${elixirInspectList(["keep-alive"])}`;
  }
  if (headers.get("sec-websocket-key") === null) return "'sec-websocket-key' header is absent";
  const version = headers.get("sec-websocket-version");
  const versions = version === null ? [] : [asciiDowncase(version)];
  if (versions.length !== 1 || versions[0] !== "13") {
    return `'sec-websocket-version' header must equal '13', got ${elixirInspectList(versions)}`;
  }
  return null;
}

/** `String.downcase(value, :ascii)`: A-Z only. */
function asciiDowncase(value: string): string {
  return value.replace(/[A-Z]/g, (c) => c.toLowerCase());
}

/**
 * `inspect/1` of a list of header values as Elixir writes it: `["13"]`, `[]`. A header value reaches
 * Deno's Headers as one char per byte (a ByteString), the bytes Cowboy hands Plug. Bytes that are UTF-8
 * and printable (String.printable?/1) are a quoted string, `"`, `\` and `#{` escaped and a tab written
 * `\t`; others are a binary, `<<200, 201>>`, as Elixir's inspect writes such a binary. A header value
 * holds no other control character (the HTTP parser refuses it).
 */
export function elixirInspectList(values: string[]): string {
  return `[${values.map(elixirInspectBinary).join(", ")}]`;
}

function elixirInspectBinary(byteString: string): string {
  const bytes = Uint8Array.from(byteString, (c) => c.charCodeAt(0) & 0xff);
  const binary = `<<${[...bytes].join(", ")}>>`;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return binary;
  }
  let out = '"';
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    const code = c.charCodeAt(0);
    if (c === "\t") out += "\\t";
    else if (code < 0x20 || (code >= 0x7f && code < 0xa0)) return binary;
    else if (c === '"' || c === "\\") out += `\\${c}`;
    else if (c === "#" && text[i + 1] === "{") out += "\\#";
    else out += c;
  }
  return `${out}"`;
}
