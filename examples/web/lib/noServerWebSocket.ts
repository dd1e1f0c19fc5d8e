// realtime-js refuses to construct on Node 20 without a WebSocket, and every supabase-js client
// builds one. The web server (proxy, session, server-side progress reads) never opens a Realtime
// connection, so its clients get this transport: constructing it is a bug and says so.
class NoServerWebSocket {
  constructor() {
    throw new Error("the readsync web server does not open Realtime connections");
  }
}

/** `realtime: { transport: noServerWebSocket }` for supabase-js clients made on the server. */
export const noServerWebSocket = NoServerWebSocket as unknown as typeof WebSocket;
