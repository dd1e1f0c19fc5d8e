// A stand-in for the few supabase-js calls RealtimeService makes for a channel (client.channel,
// subscribe with a state callback, removeChannel, getChannels, realtime.setAuth / push /
// accessTokenValue, the heartbeat callback), so unit tests can drive a channel's states by hand. The real client is
// exercised by the integration tests (tests/integration/realtime-*.test.ts).

import type { SupabaseClient } from "@supabase/supabase-js";
import { waitFor } from "../../integration/realtime_support.ts";

interface FakeChannel {
  topic: string;
  joined: boolean;
  joinPush: { ref: string };
  state?: (state: string, error?: Error) => void;
  /** The callback the service bound to the channel's broadcasts: realtime-js handing it a message. */
  broadcast?: (message: unknown) => void;
}

/**
 * RealtimeClient's token rules as realtime-js 2.119 has them: a new token goes to joined channels.
 * Its heartbeat callback lives where 2.119 keeps it: on the phoenix socket, behind an accessor of the
 * socket adapter's class, read through a getter of the client; `heartbeat(status)` is phoenix
 * calling it.
 */
export function fakeClient(tokenSource?: () => string, heartbeatIntervalMs = 25_000) {
  const channels: FakeChannel[] = [];
  let made = 0;
  const socketAdapter = new FakeSocketAdapter();
  const realtime = {
    socketAdapter,
    get heartbeatCallback() {
      return socketAdapter.heartbeatCallback;
    },
    heartbeatIntervalMs,
    /** realtime-js's onHeartbeat(): replaces the callback. */
    onHeartbeat(callback: (status: string, latency?: number) => void) {
      socketAdapter.heartbeatCallback = callback;
    },
    /** realtime-js's token source (RealtimeService installs its own over it while alive). */
    accessToken: null as (() => Promise<string | null>) | null,
    accessTokenValue: null as string | null,
    setAuth(token: string | null = null) {
      const next = token ?? tokenSource?.() ?? realtime.accessTokenValue;
      if (next !== realtime.accessTokenValue) realtime.accessTokenValue = next;
      return Promise.resolve();
    },
    push() {},
  };
  const client = {
    realtime,
    channel(name: string) {
      const channel: FakeChannel & Record<string, unknown> = {
        topic: `realtime:${name}`,
        joined: false,
        joinPush: { ref: String(++made) },
        on(type: string, _filter: unknown, callback: (message: unknown) => void) {
          if (type === "broadcast") channel.broadcast = callback;
          return channel;
        },
        subscribe(state: FakeChannel["state"]) {
          // realtime-js asks the token source again when it (re)connects the socket for a join.
          if (tokenSource) realtime.accessTokenValue = tokenSource();
          channel.state = state;
          return channel;
        },
        teardown() {},
      };
      channels.push(channel);
      return channel;
    },
    getChannels: () => channels,
    removeChannel(channel: FakeChannel) {
      channels.splice(channels.indexOf(channel), 1);
      return Promise.resolve("ok");
    },
  };
  return {
    client: client as unknown as SupabaseClient,
    realtime,
    /** realtime-js reporting a heartbeat's lifecycle (sent, ok, error, timeout, disconnected). */
    heartbeat: (status: string) => socketAdapter.socket.heartbeatCallback(status),
    /** The callback phoenix calls (the socket's). */
    socketCallback: () => socketAdapter.socket.heartbeatCallback,
    /** The n-th channel the service made (1-based), once it has subscribed it. */
    channel: (n: number) => nthChannel(channels, () => made, n),
  };
}

type HeartbeatCallback = (status: string, latency?: number) => void;

/** realtime-js 2.119's SocketAdapter: heartbeatCallback is an accessor of the class over the socket's. */
class FakeSocketAdapter {
  readonly socket = { heartbeatCallback: ((_status: string) => {}) as HeartbeatCallback };
  get heartbeatCallback(): HeartbeatCallback {
    return this.socket.heartbeatCallback;
  }
  set heartbeatCallback(callback: HeartbeatCallback) {
    this.socket.heartbeatCallback = callback;
  }
}

/** Waits (a 20 s hang guard) until the service has made its n-th channel and subscribed it. */
async function nthChannel(channels: FakeChannel[], made: () => number, n: number): Promise<FakeChannel> {
  await waitFor(`channel #${n}`, () => made() >= n && !!channels.at(-1)?.state, {
    timeoutMs: 20_000,
    intervalMs: 5,
  });
  return channels.at(-1)!;
}
