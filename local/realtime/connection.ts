// One WebSocket and the channels joined on it: the Phoenix channel protocol as Supabase Realtime
// answers realtime-js, restricted to the Broadcast surface (see README.md for the exact list).

import type postgres from "postgres";
import { joinReason, type JwtClaims, pushShutdownMessage, type TokenVerifier } from "./auth.ts";
import { canRead, canWrite, PolicyError, probeFailure } from "./authorization.ts";
import { type BroadcastHub, type Subscriber, subscriptionKey } from "./hub.ts";
import {
  type BroadcastPush,
  decodeFrame,
  encodeText,
  type PhxMessage,
  ProtocolError,
  reply,
  type Vsn,
} from "./protocol.ts";

/**
 * Supabase re-confirms a channel's token at its expiry, and at least this often
 * (realtime_channel.ex @confirm_token_ms_max_interval, 1 hour; releases before it used a 5-minute
 * interval). Its read policy is asked on join / access_token only.
 */
const CONFIRM_TOKEN_INTERVAL_MS = 60 * 60 * 1000;

/**
 * Supabase's CHANNEL_ERROR_BACKOFF_MS default: realtime_channel.ex sleeps this long (join_error/1)
 * before it returns any join error, to slow reconnect storms.
 */
export const CHANNEL_ERROR_BACKOFF_MS = 5_000;

/**
 * Supabase's CONNECT_ERROR_BACKOFF_MS default (config/runtime.exs, 2 s): user_socket.ex connect/3
 * sleeps this long (connect_error/1) before refusing a socket (missing apikey, bad or expired token),
 * so the refused upgrade's HTTP answer comes only after it.
 */
export const CONNECT_ERROR_BACKOFF_MS = 2_000;

/**
 * Supabase's ACCESS_TOKEN_THROTTLE_MS default: a channel applies at most one new token per window
 * (realtime_channel.ex handle_in("access_token")); a token pushed sooner is held until the window
 * ends, or until the current token's confirm comes first.
 */
export const ACCESS_TOKEN_THROTTLE_MS = 10_000;

export interface ConnectionDeps {
  sql: postgres.Sql;
  hub: BroadcastHub;
  verifier: TokenVerifier;
  privateOnly: boolean;
  log: (fields: Record<string, unknown>) => void;
  /** How often a channel's token is re-verified when it expires later (default: Supabase's 1 hour cap). */
  confirmTokenIntervalMs?: number;
  /** How long a refused join waits before its error reply (default CHANNEL_ERROR_BACKOFF_MS). */
  channelErrorBackoffMs?: number;
  /** The token-refresh window of a channel (default ACCESS_TOKEN_THROTTLE_MS). */
  accessTokenThrottleMs?: number;
}

export class Channel implements Subscriber {
  readonly key: string;
  accessToken: string;
  claims: JwtClaims;
  /** Write policy, probed on the first broadcast and again after a new token (Supabase caches it too). */
  canWrite: boolean | null = null;
  confirmTimer: ReturnType<typeof setTimeout> | undefined;
  /** When (performance.now) a pushed token was last applied; null until the first push (Supabase's access_token_verified_at). */
  tokenAppliedAt: number | null = null;
  /** A pushed token held for the end of the refresh window (Supabase's pending_access_token). */
  pendingToken: string | null = null;
  /**
   * Timers that apply the pending token. Like Supabase's Process.send_after, one is started when a
   * token is held while none was, and none is cancelled when the token is applied earlier (at a
   * confirm): a later one applies whatever is pending when it fires.
   */
  readonly pendingTimers = new Set<ReturnType<typeof setTimeout>>();
  /** The channel's own work, one task at a time (see run). */
  #work: Promise<void> = Promise.resolve();

  constructor(
    readonly connection: Connection,
    readonly fullTopic: string,
    readonly subTopic: string,
    readonly joinRef: string | null,
    readonly isPrivate: boolean,
    readonly selfBroadcast: boolean,
    readonly ackBroadcast: boolean,
    accessToken: string,
    claims: JwtClaims,
  ) {
    this.key = subscriptionKey(isPrivate, subTopic);
    this.accessToken = accessToken;
    this.claims = claims;
  }

  get vsn(): Vsn {
    return this.connection.vsn;
  }

  deliver(frame: string | Uint8Array): void {
    this.connection.sendRaw(frame);
  }

  /**
   * Runs a task of this channel after the ones before it, as a Phoenix channel process handles its
   * messages: its token confirms and held-token applies, and the client's pushes to it. It does not
   * wait for the socket's other work, a join being decided included (on Supabase a channel confirms
   * its token at expiry while the socket waits for another channel's refused join).
   */
  run(task: () => Promise<void>): Promise<void> {
    const done = this.#work.then(task);
    this.#work = done.catch(() => {});
    return done;
  }
}

/** A socket's error handler: a failure of the socket ends in its close event (or, while it connects, see endpoint.ts). */
function ignoreSocketError(): void {}

/**
 * Closes `ws` with `code` and `reason` when it opens. Deno (2.9) takes close() on a server socket still
 * CONNECTING as CLOSING without sending anything and sets it OPEN when its upgrade completes (ext/http
 * 02_websocket.ts), which would leave the client on an open socket nothing answers. A function of its
 * own so that the listener holds the socket and the close only, not the Connection.
 */
function closeWhenOpen(ws: WebSocket, code: number, reason: string): void {
  ws.addEventListener("open", () => {
    try {
      ws.close(code, reason);
    } catch { /* already closed */ }
  }, { once: true });
}

export class Connection {
  readonly channels = new Map<string, Channel>();
  /** When the client last sent a frame (the endpoint closes sockets idle for too long). */
  lastReceivedAt = Date.now();
  #queue: Promise<void> = Promise.resolve();
  #closed = false;
  /** Whether a join is being decided (see #join): frames for the client then wait in #queue. */
  #joining = false;
  /** Ends a refused join's wait early when the socket goes away. */
  #endJoinWait: (() => void) | null = null;
  /** Whether a close asked for while the upgrade was under way waits for the socket's open (see close). */
  #closeAtOpen = false;

  constructor(
    readonly ws: WebSocket,
    readonly vsn: Vsn,
    /** The socket's own token (apikey): what a join without `access_token` is authorized with. */
    readonly socketToken: string,
    readonly deps: ConnectionDeps,
    /** Headers of the upgrade request: policies see them as `request.headers`, as on Supabase. */
    readonly headers: Record<string, string> = {},
  ) {
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      this.lastReceivedAt = Date.now();
      this.#enqueue(event.data);
    };
    ws.onclose = () => this.dispose();
    ws.onerror = ignoreSocketError;
  }

  get closed(): boolean {
    return this.#closed;
  }

  sendRaw(frame: string | Uint8Array): void {
    if (this.#closed) return;
    if (this.#joining) {
      // The socket is blocked in a join: the frame waits in line with the client's frames that
      // reached it before, as a push message waits in a Phoenix socket's mailbox (see #join).
      this.#queue = this.#queue.then(() => this.#write(frame));
      return;
    }
    this.#write(frame);
  }

  #write(frame: string | Uint8Array): void {
    if (this.#closed || this.ws.readyState !== WebSocket.OPEN) return;
    try {
      this.ws.send(frame);
    } catch {
      // The socket went away between the check and the send; onclose cleans up.
    }
  }

  send(message: PhxMessage): void {
    this.sendRaw(encodeText(message, this.vsn));
  }

  /**
   * Closes the socket (server shutdown, idle timeout): the client sees a close and reconnects with backoff.
   * Asked for before the upgrade has completed (the endpoint closing while a socket connects), the close is
   * sent when the socket opens: Deno (2.9) marks a server socket closed while CONNECTING as CLOSING without
   * sending anything, then sets it OPEN when the upgrade completes (ext/http 02_websocket.ts), which left
   * the client on an open socket nothing answered any more.
   */
  close(code = 1001, reason = "server shutting down"): void {
    if (this.ws.readyState === WebSocket.CONNECTING && !this.#closeAtOpen) {
      this.#closeAtOpen = true;
      closeWhenOpen(this.ws, code, reason);
    }
    try {
      this.ws.close(code, reason);
    } catch { /* already closed */ }
    this.dispose();
  }

  dispose(): void {
    if (this.#closed) return;
    this.#closed = true;
    // Nothing of the socket's leads back here any more: a socket whose upgrade Deno never completes is
    // kept by Deno for as long as its connection (the endpoint's releaseUnopened), and the Connection with
    // its handlers would be kept with it. What the socket still needs is closeWhenOpen's, if anything.
    this.ws.onmessage = null;
    this.ws.onclose = null;
    this.#joining = false;
    this.#endJoinWait?.();
    for (const channel of this.channels.values()) this.#drop(channel);
    this.channels.clear();
  }

  /**
   * The client's frames are handled one at a time, in order, as Phoenix's socket transport handles
   * them (a channel's own timers run in the channel's turn instead: Channel.run).
   */
  #enqueue(data: unknown): void {
    this.#queue = this.#queue.then(() => this.#handleFrame(data)).catch((error) => {
      this.deps.log({ event: "frame_failed", error: String(error) });
    });
  }

  async #handleFrame(data: unknown): Promise<void> {
    if (this.#closed) return;
    let message: PhxMessage;
    try {
      message = decodeFrame(data as string | ArrayBuffer, this.vsn);
    } catch (error) {
      if (error instanceof ProtocolError) {
        this.deps.log({ event: "bad_frame", error: error.message });
        return;
      }
      throw error;
    }
    const { topic, event, ref, joinRef } = message;
    if (topic === "phoenix" && event === "heartbeat") {
      this.send(reply(null, ref, "phoenix", "ok", {}));
      return;
    }
    if (event === "phx_join") return await this.#join(message);

    const channel = this.channels.get(topic);
    if (!channel) return this.#unjoined(message);
    if (event === "phx_leave" && channel.joinRef !== null && joinRef !== channel.joinRef) {
      // A leave for an earlier join of this topic (or one without join_ref): Phoenix's socket
      // ignores it without a reply ("the client has raced a server close"; socket.ex handle_in for
      // phx_leave matches the channel's join_ref, or a channel joined without one). Any other push
      // goes to the topic's current channel whatever its join_ref (socket.ex sends it to the
      // channel's pid; Phoenix.Channel.Server matches the topic only).
      this.deps.log({ event: "stale_leave", topic, joinRef, current: channel.joinRef });
      return;
    }
    switch (event) {
      case "phx_leave":
        // Phoenix's channel answers a leave with ok and stops ({:shutdown, :left}); the stop sends
        // the socket {:socket_close, ...}, which writes the channel's phx_close after the reply
        // (phoenix channel/server.ex handle_info for "phx_leave", send_socket_close/2; socket.ex
        // socket_close/2).
        this.send(reply(channel.joinRef, ref, topic, "ok", {}));
        this.#close(channel);
        return;
      case "access_token":
        return await this.#onChannel(channel, message, () => this.#refreshToken(channel, message.payload));
      case "broadcast":
        return await this.#onChannel(channel, message, () => this.#broadcast(channel, message));
      case "presence":
        if (ref !== null) {
          this.send(
            reply(channel.joinRef, ref, topic, "error", {
              reason: "Presence is not emulated by the local Realtime endpoint",
            }),
          );
        }
        return;
      default:
        // Supabase logs unexpected client events and does not answer them.
        this.deps.log({ event: "unexpected_push", topic, push: event });
    }
  }

  /** A push to a topic this socket has not joined (never, refused, or closed since). */
  #unjoined(message: PhxMessage): void {
    const { topic, event, ref, joinRef } = message;
    // Phoenix answers a leave of a topic this socket has not joined with ok (echoing its join_ref),
    // and any other push to it with "unmatched topic", a reply without join_ref (socket.ex
    // encode_ignore/2 builds it from the push's ref and topic only).
    if (ref !== null && event === "phx_leave") this.send(reply(joinRef, ref, topic, "ok", {}));
    else if (ref !== null) this.send(reply(null, ref, topic, "error", { reason: "unmatched topic" }));
  }

  /**
   * A client's push to a joined channel, handled in the channel's turn (after a confirm or token
   * apply of its own that is running); the socket's next frames wait for it, as before.
   */
  async #onChannel(channel: Channel, message: PhxMessage, task: () => Promise<void>): Promise<void> {
    await channel.run(async () => {
      if (this.#closed) return;
      // Closed by its own work meanwhile (an expired token): as if the push came just after.
      if (this.channels.get(channel.fullTopic) !== channel) return this.#unjoined(message);
      await task();
    });
  }

  /**
   * A join, answered as Phoenix's transport answers it: the socket waits for the channel's join
   * (Phoenix.Channel.Server.join blocks in `receive` until the reply), so while a join is decided
   * nothing else goes out — other channels' broadcasts, system messages, the phx_close of a channel
   * this join replaces (Phoenix sends that to itself and writes it after the reply) — and the
   * client's next frames wait in the queue. A refused join is answered only after the channel's
   * error backoff (realtime_channel.ex join_error/1 sleeps CHANNEL_ERROR_BACKOFF_MS), and the
   * socket stalls with it: heartbeats sent meanwhile are answered after the refusal. After the
   * reply, the socket's process works through its mailbox in arrival order, where the client's
   * frames (Phoenix.Socket.__in__) and the channels' pushes ({:socket_push, ...} from fastlane
   * broadcasts and channel processes, Phoenix.Socket.__info__) wait in one line: so a frame for the
   * client sent meanwhile waits in #queue behind the client frames that came before it (sendRaw),
   * and a heartbeat that came before a broadcast is answered before the broadcast goes out.
   */
  async #join(message: PhxMessage): Promise<void> {
    this.#joining = true;
    let answer: PhxMessage[] = [];
    try {
      answer = await this.#decideJoin(message);
    } finally {
      this.#joining = false;
      for (const frame of answer) this.send(frame);
    }
  }

  /** The join's reply (and what follows it at once), after the channel is set up or refused. */
  async #decideJoin(message: PhxMessage): Promise<PhxMessage[]> {
    const { topic, ref, joinRef } = message;
    const payload = (message.payload && typeof message.payload === "object" ? message.payload : {}) as Record<
      string,
      unknown
    >;
    const refuse = async (reason: string): Promise<PhxMessage[]> => {
      this.deps.log({ event: "join_refused", topic, reason });
      await this.#joinErrorWait();
      return [reply(joinRef, ref, topic, "error", { reason })];
    };
    const previous = this.channels.get(topic);
    // Phoenix closes the existing channel as soon as a topic is joined again on the same socket,
    // before the new join is decided: a refused re-join (an expired token) leaves nothing joined.
    // Its phx_close waits in line (sendRaw) and goes out after this join's reply, as on Phoenix.
    if (previous) this.#close(previous);
    // No channel matches: Phoenix's socket answers this itself (encode_ignore/2), without the
    // channel's backoff and without join_ref.
    if (!topic.startsWith("realtime:")) {
      this.deps.log({ event: "join_refused", topic, reason: "unmatched topic" });
      return [reply(null, ref, topic, "error", { reason: "unmatched topic" })];
    }
    const subTopic = topic.slice("realtime:".length);
    if (subTopic === "") return await refuse("TopicNameRequired: You must provide a topic name");

    const config = (payload.config && typeof payload.config === "object" ? payload.config : {}) as Record<
      string,
      unknown
    >;
    const broadcast =
      (config.broadcast && typeof config.broadcast === "object" ? config.broadcast : {}) as Record<
        string,
        unknown
      >;
    const isPrivate = config.private === true;
    if (this.deps.privateOnly && !isPrivate) {
      return await refuse("PrivateOnly: This project only allows private channels");
    }
    const postgresChanges = Array.isArray(config.postgres_changes) ? config.postgres_changes : [];
    if (postgresChanges.length > 0) {
      return await refuse("PostgresChangesNotEmulated: the local Realtime endpoint serves Broadcast only");
    }

    const token = this.#joinToken(payload);
    const verified = await this.deps.verifier.verify(token);
    if (!verified.ok) return await refuse(joinReason(verified.failure));
    const claims = verified.claims;

    if (isPrivate) {
      const allowed = await this.#canRead(subTopic, claims);
      if (allowed === "error") {
        // Supabase answers this one without a code prefix.
        return await refuse("Realtime was unable to connect to the project database");
      }
      if (!allowed) {
        return await refuse(
          `Unauthorized: You do not have permissions to read from this Channel topic: ${subTopic}`,
        );
      }
    }
    if (this.#closed) return [];
    // Another join of the topic was decided while this one awaited: this one replaces it.
    const racing = this.channels.get(topic);
    if (racing) this.#close(racing);
    const channel = new Channel(
      this,
      topic,
      subTopic,
      joinRef,
      isPrivate,
      broadcast.self === true,
      broadcast.ack === true,
      token,
      claims,
    );
    this.channels.set(topic, channel);
    this.deps.hub.add(channel.key, channel);
    this.#scheduleConfirm(channel);
    this.deps.log({ event: "joined", topic, private: isPrivate, role: claims.role, sub: claims.sub });
    const answer = [reply(joinRef, ref, topic, "ok", { postgres_changes: [] })];
    const presence =
      (config.presence && typeof config.presence === "object" ? config.presence : {}) as Record<
        string,
        unknown
      >;
    if (presence.enabled === true) {
      answer.push({ joinRef, ref: null, topic, event: "presence_state", payload: {} });
    }
    return answer;
  }

  /** A refused join's wait (CHANNEL_ERROR_BACKOFF_MS); cut short if the socket goes away meanwhile. */
  async #joinErrorWait(): Promise<void> {
    const ms = this.deps.channelErrorBackoffMs ?? CHANNEL_ERROR_BACKOFF_MS;
    if (!(ms > 0) || this.#closed) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => this.#endJoinWait?.(), ms);
      this.#endJoinWait = () => {
        clearTimeout(timer);
        this.#endJoinWait = null;
        resolve();
      };
    });
  }

  /**
   * The token a join is authorized with, chosen as Supabase's assign_access_token does: an API key
   * (`sb_…`, a publishable or secret key, which is not a JWT) in `access_token` (or, when that is
   * absent, in `user_token`) means the socket's own token; otherwise `user_token` when it is a
   * string, else `access_token` when it is one, else the socket's token.
   */
  #joinToken(payload: Record<string, unknown>): string {
    // Elixir's `||`: nil and false give way to the next value; anything else (even "") does not.
    const given = (value: unknown) =>
      value === null || value === undefined || value === false ? undefined : value;
    const first = given(payload.access_token) ?? given(payload.user_token);
    if (typeof first === "string" && first.startsWith("sb_")) return this.socketToken;
    if (typeof payload.user_token === "string") return payload.user_token;
    if (typeof payload.access_token === "string") return payload.access_token;
    return this.socketToken;
  }

  async #canRead(subTopic: string, claims: JwtClaims): Promise<boolean | "error"> {
    try {
      return await canRead(this.deps.sql, { topic: subTopic, claims, headers: this.headers });
    } catch (error) {
      if (error instanceof PolicyError) {
        // Supabase logs RlsPolicyError and refuses as Unauthorized (maybe_assign_policies).
        this.deps.log({ event: "rls_policy_error", topic: subTopic, code: error.code, error: error.message });
        return false;
      }
      this.deps.log({ event: "policy_check_failed", topic: subTopic, error: String(error) });
      return "error";
    }
  }

  /**
   * An `access_token` push, taken as Supabase's handle_in("access_token") takes it: an API key
   * (`sb_…`), the channel's current token, null, or the token already held is ignored; a value that
   * is not a string matches no clause (logged as unexpected; the channel stays). A new token is
   * applied at once if it is the channel's first, or if the last one was applied a whole refresh
   * window ago (ACCESS_TOKEN_THROTTLE_MS, 10 s); otherwise it is held (a later push replaces it) and
   * applied when the window ends, or at the current token's confirm if that comes first.
   */
  async #refreshToken(channel: Channel, payload: unknown): Promise<void> {
    const token = (payload as { access_token?: unknown } | null)?.access_token;
    if (typeof token === "string" && token.startsWith("sb_")) return;
    if (token === null || token === undefined || token === channel.accessToken) return;
    if (token === channel.pendingToken) return;
    if (typeof token !== "string") {
      this.deps.log({ event: "unexpected_push", topic: channel.fullTopic, push: "access_token" });
      return;
    }
    const now = performance.now();
    const windowMs = this.deps.accessTokenThrottleMs ?? ACCESS_TOKEN_THROTTLE_MS;
    const since = channel.tokenAppliedAt === null ? Infinity : now - channel.tokenAppliedAt;
    if (since >= windowMs) return await this.#applyToken(channel, token, now);
    if (channel.pendingToken === null) {
      const remaining = windowMs - since;
      this.deps.log({
        event: "access_token_throttled",
        topic: channel.fullTopic,
        apply_in_ms: Math.round(remaining),
      });
      const timer = setTimeout(() => {
        channel.pendingTimers.delete(timer);
        channel.run(() => this.#applyPendingToken(channel)).catch((error) => {
          this.deps.log({ event: "token_apply_failed", error: String(error) });
        });
      }, remaining);
      channel.pendingTimers.add(timer);
    } else {
      this.deps.log({ event: "access_token_held_replaced", topic: channel.fullTopic });
    }
    channel.pendingToken = token;
  }

  async #applyPendingToken(channel: Channel): Promise<void> {
    if (this.#closed || this.channels.get(channel.fullTopic) !== channel) return;
    const token = channel.pendingToken;
    if (token !== null) await this.#applyToken(channel, token, performance.now());
  }

  /** A new token for the channel: verified and, on a private channel, the read policy asked again. */
  async #applyToken(channel: Channel, token: string, now: number): Promise<void> {
    channel.tokenAppliedAt = now;
    channel.pendingToken = null;
    const verified = await this.deps.verifier.verify(token);
    if (!verified.ok) return this.#shutdown(channel, pushShutdownMessage(verified.failure));
    if (channel.isPrivate) {
      const allowed = await this.#canRead(channel.subTopic, verified.claims);
      if (allowed === "error") {
        return this.#shutdown(channel, "Realtime was unable to connect to the project database");
      }
      if (!allowed) {
        return this.#shutdown(
          channel,
          `You do not have permissions to read from this Channel topic: ${channel.subTopic}`,
        );
      }
    }
    if (this.channels.get(channel.fullTopic) !== channel) return;
    channel.accessToken = token;
    channel.claims = verified.claims;
    channel.canWrite = null;
    this.#scheduleConfirm(channel);
    this.deps.log({ event: "token_refreshed", topic: channel.fullTopic, exp: verified.claims.exp });
  }

  /**
   * Like Supabase's confirm_token: at expiry (or after an hour, if that comes first) re-verify the
   * channel's token. The read policy is not asked again here (Supabase asks it at join and on an
   * access_token push only), so a revoked policy takes effect at the next join or token push, as it
   * does on Supabase.
   */
  #scheduleConfirm(channel: Channel): void {
    clearTimeout(channel.confirmTimer);
    const untilExpiry = channel.claims.exp * 1000 - Date.now();
    const interval = this.deps.confirmTokenIntervalMs ?? CONFIRM_TOKEN_INTERVAL_MS;
    const delay = Math.max(0, Math.min(interval, untilExpiry));
    channel.confirmTimer = setTimeout(() => {
      channel.confirmTimer = undefined;
      channel.run(() => this.#confirm(channel)).catch((error) => {
        this.deps.log({ event: "confirm_failed", error: String(error) });
      });
    }, delay);
  }

  async #confirm(channel: Channel): Promise<void> {
    if (this.#closed || this.channels.get(channel.fullTopic) !== channel) return;
    // A held token is applied instead of confirming the one it replaces (Supabase does the same).
    if (channel.pendingToken !== null) {
      return await this.#applyToken(channel, channel.pendingToken, performance.now());
    }
    const verified = await this.deps.verifier.verify(channel.accessToken);
    if (!verified.ok) return this.#shutdown(channel, verified.failure.message);
    if (this.channels.get(channel.fullTopic) !== channel) return;
    this.deps.log({ event: "token_confirmed", topic: channel.fullTopic, exp: verified.claims.exp });
    this.#scheduleConfirm(channel);
  }

  /** Supabase's shutdown_response: a `system` error message, then the channel closes. */
  #shutdown(channel: Channel, message: string): void {
    if (this.channels.get(channel.fullTopic) !== channel) return;
    this.deps.log({ event: "channel_shutdown", topic: channel.fullTopic, reason: message });
    this.send({
      joinRef: channel.joinRef,
      ref: null,
      topic: channel.fullTopic,
      event: "system",
      payload: { extension: "system", status: "error", message, channel: channel.subTopic },
    });
    this.#close(channel);
  }

  /** The channel stops receiving and leaves the socket; the client is told with `phx_close`. */
  #close(channel: Channel): void {
    this.#drop(channel);
    this.channels.delete(channel.fullTopic);
    this.send({
      joinRef: channel.joinRef,
      ref: channel.joinRef,
      topic: channel.fullTopic,
      event: "phx_close",
      payload: {},
    });
  }

  async #broadcast(channel: Channel, message: PhxMessage): Promise<void> {
    const push = message.payload as Partial<BroadcastPush> | null;
    const ack = (status: "ok" | "error", response: unknown = {}) => {
      if (channel.ackBroadcast && message.ref !== null) {
        this.send(reply(channel.joinRef, message.ref, channel.fullTopic, status, response));
      }
    };
    if (!push || typeof push !== "object" || typeof push.event !== "string") return;
    if (channel.isPrivate) {
      if (channel.canWrite === null) {
        try {
          channel.canWrite = await canWrite(this.deps.sql, {
            topic: channel.subTopic,
            claims: channel.claims,
            headers: this.headers,
          });
        } catch (error) {
          if (error instanceof PolicyError) {
            // Supabase: RlsPolicyError logged, nothing cached, the send dropped; with ack the reply
            // names the error (BroadcastHandler's maybe_reply_error(socket, :rls_policy_error)).
            this.deps.log({
              event: "rls_policy_error",
              topic: channel.subTopic,
              code: error.code,
              error: error.message,
            });
            return ack("error", { error: "rls_policy_error" });
          }
          // Supabase's other answers (BroadcastHandler): query_canceled, missing_partition,
          // unable_to_connect_to_project, else unable_to_set_policies; nothing cached either.
          this.deps.log({ event: "policy_check_failed", topic: channel.subTopic, error: String(error) });
          return ack("error", { error: probeFailure(error) ?? "unable_to_set_policies" });
        }
      }
      if (!channel.canWrite) {
        // Supabase drops the message; with `ack: true` it answers {error: "unauthorized"}.
        this.deps.log({ event: "broadcast_denied", topic: channel.fullTopic, sub: channel.claims.sub });
        return ack("error", { error: "unauthorized" });
      }
    }
    this.deps.hub.relay(
      channel.key,
      { fullTopic: channel.fullTopic, event: push.event, payload: push.payload },
      channel.selfBroadcast ? undefined : channel,
    );
    ack("ok");
  }

  #drop(channel: Channel): void {
    clearTimeout(channel.confirmTimer);
    channel.confirmTimer = undefined;
    for (const timer of channel.pendingTimers) clearTimeout(timer);
    channel.pendingTimers.clear();
    this.deps.hub.remove(channel.key, channel);
  }
}
