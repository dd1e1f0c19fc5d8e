// 4. Propagation: device A writes through POST /functions/v1/progress; device B is a supabase-js
// client subscribed (private channel, RLS-authorised) to the user's progress:<uid> topic on the
// local Realtime endpoint. Measured: from A's update call returning to B's broadcast handler running,
// with 1, 100 and 1,000 subscribed devices. Device B runs in this process; the other N - 1 devices
// run in a separate process (bench/lib/crowd.ts), which also reports when the last of them got each
// update ("all devices"); then the largest N once more as N devices of N different users. Baseline
// (same run): the update call's own latency (A's POST round trip). Floor (same run): the largest
// one-topic fan-out again, the same devices joined to a bare WebSocket server (bench/lib/wsfloor.ts).

import { fileURLToPath } from "node:url";
import { createClient } from "@supabase/supabase-js";
import { benchUserTokens } from "../lib/db.ts";
import { Histogram } from "../lib/histogram.ts";
import { ratio, type Row, type SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";

const USER = 0x400001;
const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Crowd {
  report(): Promise<{ entries: [number, { n: number; last: number }][]; mismatches: number }>;
  stop(): Promise<void>;
}

/** The Phoenix WebSocket URL under an API URL (the local stack's, or the WebSocket floor's). */
function realtimeWsUrl(apiUrl: string, anonKey: string): string {
  return `${apiUrl.replace(/^http/, "ws")}/realtime/v1/websocket?apikey=${anonKey}&vsn=2.0.0`;
}

/** Reads `<prefix> ...` lines from a child's stdout. */
function lineReader(stdout: ReadableStream<Uint8Array>) {
  const reader = stdout.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  return async (prefixes: string[]): Promise<string> => {
    for (;;) {
      const newline = buffered.indexOf("\n");
      if (newline >= 0) {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        if (prefixes.some((p) => line.startsWith(p))) return line;
        continue;
      }
      const { value, done } = await reader.read();
      if (done) throw new Error("the child process ended early");
      buffered += value;
    }
  };
}

async function startCrowd(wsUrl: string, assignments: { token: string; topic: string }[]): Promise<Crowd> {
  const count = assignments.length;
  const assignmentsFile = await Deno.makeTempFile({ prefix: "readsync-bench-crowd-", suffix: ".json" });
  await Deno.writeTextFile(assignmentsFile, JSON.stringify(assignments));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}bench/lib/crowd.ts`],
    cwd: ROOT,
    env: {
      BENCH_CROWD: JSON.stringify({ wsUrl, assignmentsFile }),
    },
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const writer = child.stdin.getWriter();
  const nextLine = lineReader(child.stdout);
  const stop = async () => {
    await writer.close().catch(() => {});
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    await child.status;
    clearTimeout(timer);
    await Deno.remove(assignmentsFile).catch(() => {});
  };
  const ready = await nextLine(["CROWD_READY", "CROWD_FAILED"]);
  if (!ready.startsWith("CROWD_READY")) {
    await stop();
    throw new Error(`crowd of ${count}: ${ready}`);
  }
  return {
    report: async () => {
      await writer.write(new TextEncoder().encode("report\n"));
      return JSON.parse((await nextLine(["CROWD_REPORT "])).slice("CROWD_REPORT ".length));
    },
    stop,
  };
}

/**
 * Asks the crowd until every one of `chapters` reached all `sockets` of it (up to 10 s): the last
 * report by chapter, how many chapters some socket still lacked, and frames that arrived out of step.
 */
async function crowdCompletion(crowd: Crowd, chapters: number[], sockets: number) {
  let byChapter = new Map<number, { n: number; last: number }>();
  let incomplete = chapters.length;
  let mismatches = 0;
  for (let attempt = 0; attempt < 40; attempt++) {
    const answer = await crowd.report();
    byChapter = new Map(answer.entries);
    mismatches = answer.mismatches;
    incomplete = chapters.filter((c) => (byChapter.get(c)?.n ?? 0) < sockets).length;
    if (incomplete === 0) break;
    await sleep(250);
  }
  return { byChapter, incomplete, mismatches };
}

export async function propagationSection(ctx: Ctx): Promise<SectionResult> {
  const { stack, opts } = ctx;
  const [user] = await benchUserTokens(ctx.sql, stack.jwtSecret, USER, USER);
  const topic = `progress:${user.id}`;
  const url = `${stack.apiUrl}/functions/v1/progress`;
  let clock = Date.now() - 3_600_000;
  const postUpdate = async (chapter: number) => {
    const res = await fetch(url, {
      method: "POST",
      headers: {
        authorization: `Bearer ${user.token}`,
        apikey: stack.anonKey,
        "content-type": "application/json",
      },
      body: JSON.stringify({
        series_id: `prop-${chapter % 10}`,
        chapter,
        page: 1,
        percentage: 0.5,
        device_id: "device-a",
        updated_at: new Date(++clock).toISOString(),
      }),
    });
    const body = await res.json();
    if (!res.ok || body.won !== true) {
      throw new Error(`POST /progress: ${res.status} ${JSON.stringify(body)}`);
    }
  };

  // Device B: supabase-js in this process, joined AFTER the other devices, so it is the last
  // socket the endpoint sends each frame to: B's figure includes the whole server-side fan-out.
  // A second supabase-js device ("first") joins BEFORE the others: the best position in the fan-out.
  const arrivals = new Map<number, number>();
  const arrivalsFirst = new Map<number, number>();
  const waiters = new Map<number, () => void>();
  // The last broadcast B received (event and payload): the WebSocket floor sends the same shape.
  let sample: { event: string; payload: { record?: Record<string, unknown> } } | null = null;
  const joinDevice = async (into: Map<number, number>, wake: boolean, apiUrl = stack.apiUrl) => {
    const device = createClient(apiUrl, stack.anonKey, {
      accessToken: () => Promise.resolve(user.token),
      realtime: { timeout: 30_000 },
    });
    await device.realtime.setAuth();
    const joined = new Promise<void>((resolve, reject) => {
      device.channel(topic, { config: { private: true } })
        .on("broadcast", { event: "*" }, (m) => {
          const at = now();
          const chapter = Number((m.payload as { record?: { chapter?: unknown } })?.record?.chapter);
          into.set(chapter, at);
          if (wake) {
            sample = { event: m.event, payload: m.payload as { record?: Record<string, unknown> } };
            waiters.get(chapter)?.();
          }
        })
        .subscribe((status, error) => {
          if (status === "SUBSCRIBED") resolve();
          else if (status === "CHANNEL_ERROR" || status === "TIMED_OUT") reject(error ?? new Error(status));
        });
    });
    try {
      await joined;
    } catch (error) {
      // A client left behind would keep reconnecting for the rest of the run.
      await device.removeAllChannels().catch(() => {});
      await device.realtime.disconnect();
      throw error;
    }
    return async () => {
      await device.removeAllChannels().catch(() => {});
      await device.realtime.disconnect();
    };
  };

  /** Resolves true once a waking device (B) has run its handler for `chapter`, false after 10 s. */
  const deliveryTo = (into: Map<number, number>, chapter: number) =>
    new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        waiters.delete(chapter);
        resolve(false);
      }, 10_000);
      waiters.set(chapter, () => {
        clearTimeout(timer);
        waiters.delete(chapter);
        resolve(true);
      });
      if (into.has(chapter)) waiters.get(chapter)!();
    });

  const section: SectionResult = {
    id: "propagation",
    title:
      "4. Propagation: device A's update call returns → device B's handler runs (supabase-js, local Realtime)",
    status: "ok",
    rows: [],
    notes: [],
  };
  const details: Record<string, unknown> = {};
  const maxDevices = Math.max(...opts.propagationDevices);
  let base = 0;
  // Same topic: every device is the user's (the worst case: each update goes to all N sockets). Then,
  // with the largest N, "spread": N connected devices of N different users, so each update goes to
  // B alone while the endpoint holds N connections.
  const scenarios = [
    ...opts.propagationDevices.map((devices) => ({ devices, spread: false })),
    ...(maxDevices > 2 ? [{ devices: maxDevices, spread: true }] : []),
  ];
  for (const { devices, spread } of scenarios) {
    const t = performance.now();
    const leaveFirst = devices > 2 && !spread ? await joinDevice(arrivalsFirst, false) : null;
    const others = spread
      ? (await benchUserTokens(ctx.sql, stack.jwtSecret, USER + 1, USER + devices - 1))
        .map((u) => ({ token: u.token, topic: `progress:${u.id}` }))
      : Array.from({ length: Math.max(0, devices - 2) }, () => ({ token: user.token, topic }));
    const crowd = others.length > 0
      ? await startCrowd(realtimeWsUrl(stack.apiUrl, stack.anonKey), others)
      : null;
    const joinMs = performance.now() - t;
    let leaveB: (() => Promise<void>) | null = null;
    try {
      leaveB = await joinDevice(arrivals, true);
      const fromReturn = new Histogram();
      const fromCall = new Histogram();
      const callMs = new Histogram();
      const allFromReturn = new Histogram();
      const firstFromReturn = new Histogram();
      const returned = new Map<number, number>();
      let early = 0;
      let lost = 0;
      const warmup = 3;
      for (let i = 0; i < opts.propagationUpdates + warmup; i++) {
        const chapter = base + i;
        const delivered = deliveryTo(arrivals, chapter);
        const t0 = now();
        await postUpdate(chapter);
        const t1 = now();
        const ok = await delivered;
        if (i < warmup) continue;
        if (!ok) {
          lost++;
          continue;
        }
        returned.set(chapter, t1);
        const tb = arrivals.get(chapter)!;
        if (tb < t1) early++;
        fromReturn.recordMs(tb - t1);
        fromCall.recordMs(tb - t0);
        callMs.recordMs(t1 - t0);
        await sleep(10); // one update at a time: latency, not queueing
      }
      // The crowd: every device must get every update; when did the last one get it?
      let incomplete = 0;
      let crowdMismatches = 0;
      if (crowd && !spread) {
        const answer = await crowdCompletion(crowd, [...returned.keys()], devices - 2);
        incomplete = answer.incomplete;
        crowdMismatches = answer.mismatches;
        const byChapter = answer.byChapter;
        for (const [chapter, t1] of returned) {
          const entry = byChapter.get(chapter);
          const first = arrivalsFirst.get(chapter);
          if (first !== undefined) firstFromReturn.recordMs(first - t1);
          if (entry && entry.n >= devices - 2 && first !== undefined) {
            allFromReturn.recordMs(Math.max(entry.last, arrivals.get(chapter)!, first) - t1);
          }
        }
      } else {
        // Alone on its topic (spread: the other devices belong to other users and get nothing).
        for (const [chapter, t1] of returned) allFromReturn.recordMs(arrivals.get(chapter)! - t1);
      }
      base += 1000;

      const b = fromReturn.summaryMs();
      const call = callMs.summaryMs();
      const all = allFromReturn.summaryMs();
      const first = firstFromReturn.summaryMs();
      details[`n${devices}${spread ? "_spread" : ""}`] = {
        firstJoinedDeviceFromReturn: first,
        deviceBFromReturn: b,
        deviceBFromCallStart: fromCall.summaryMs(),
        updateCall: call,
        allDevicesFromReturn: all,
        arrivedBeforeCallReturned: early,
        lostForDeviceB: lost,
        updatesNotReachingEveryDevice: incomplete,
        crowdFramesOutOfStep: crowdMismatches,
        joinSeconds: Math.round(joinMs / 100) / 10,
      };
      ctx.log(
        `propagation n=${devices}: B p50 ${b.p50} p99 ${b.p99} ms after return; all devices p50 ${all.p50} p99 ` +
          `${all.p99} ms; call p50 ${call.p50} ms; ${early} early, ${lost} lost, ${incomplete} incomplete, ${crowdMismatches} out of step`,
      );
      const label = spread
        ? `${devices} connected devices of ${devices} users (B alone on its topic)`
        : `${devices} subscribed device${devices > 1 ? "s" : ""}`;
      const targeted = devices === maxDevices && !spread;
      const rows: Row[] = [
        {
          metric: `B p50, ${label}`,
          value: b.p50,
          unit: "ms",
          baseline: call.p50,
          baselineLabel: "update call p50",
          ratio: ratio(b.p50, call.p50),
          ...(targeted ? { target: "≤ 10 ms", met: b.p50 <= 10 && lost === 0 } : {}),
        },
        {
          metric: `B p99, ${label}`,
          value: b.p99,
          unit: "ms",
          baseline: call.p99,
          baselineLabel: "update call p99",
          ratio: ratio(b.p99, call.p99),
          ...(targeted ? { target: "≤ 50 ms", met: b.p99 <= 50 && lost === 0 } : {}),
        },
      ];
      if (devices > 2 && !spread) {
        rows.push(
          {
            metric: `  first-joined device (first in the fan-out) p50, ${label}`,
            value: first.p50,
            unit: "ms",
            baseline: call.p50,
            baselineLabel: "update call p50",
            ratio: ratio(first.p50, call.p50),
          },
          {
            metric: `  last of all ${devices} devices to receive, p50, ${label}`,
            value: all.p50,
            unit: "ms",
            baseline: call.p50,
            baselineLabel: "update call p50",
            ratio: ratio(all.p50, call.p50),
          },
          {
            metric: `  last of all ${devices} devices to receive, p99, ${label}`,
            value: all.p99,
            unit: "ms",
            baseline: call.p99,
            baselineLabel: "update call p99",
            ratio: ratio(all.p99, call.p99),
          },
        );
      }
      section.rows.push(...rows);
      if (lost > 0 || incomplete > 0 || crowdMismatches > 0) {
        section.notes.push(
          `${label}: ${lost} updates never reached device B within 10 s; ${incomplete} did not reach every ` +
            `device; ${crowdMismatches} crowd frames arrived out of step.`,
        );
      }
      section.notes.push(
        `${label}: ${early} of ${opts.propagationUpdates} broadcasts reached B before A's call had returned ` +
          `(recorded as 0 ms); from A's call start B p50 ${fromCall.summaryMs().p50} ms, p99 ${fromCall.summaryMs().p99} ms; ` +
          `${Math.max(0, devices - 1)} other devices joined in ${Math.round(joinMs / 100) / 10} s.`,
      );
    } finally {
      await leaveB?.();
      await crowd?.stop();
      await leaveFirst?.();
    }
  }
  const bLastSummary =
    (details[`n${maxDevices}`] as { deviceBFromReturn?: { p50: number; p99: number } } | undefined)
      ?.deviceBFromReturn;

  // The WebSocket floor under the largest same-topic fan-out: the same devices in the same places
  // (a first supabase-js device, N - 2 crowd sockets in their own process, B last), joined to a bare
  // WebSocket server in its own process (bench/lib/wsfloor.ts) that sends the same frame on request.
  if (maxDevices > 2 && bLastSummary !== undefined && sample !== null) {
    try {
      const floor = await measureWebSocketFloor(maxDevices, sample);
      details.webSocketFloor = floor;
      ctx.log(
        `propagation floor n=${maxDevices}: B p50 ${floor.deviceB.p50} p99 ${floor.deviceB.p99} ms after the send ` +
          `loop starts; first-joined p50 ${floor.firstJoined.p50} ms; ${floor.lost} lost, ${floor.incomplete} incomplete`,
      );
      const label = `bare WebSocket server, ${maxDevices} subscribed devices (bench/lib/wsfloor.ts)`;
      section.rows.push(
        {
          metric: `  floor: B p50 from the send loop's start, ${label}`,
          value: floor.deviceB.p50,
          unit: "ms",
          baseline: bLastSummary.p50,
          baselineLabel: `B p50, ${maxDevices} subscribed devices`,
          ratio: ratio(floor.deviceB.p50, bLastSummary.p50),
        },
        {
          metric: `  floor: B p99 from the send loop's start, ${label}`,
          value: floor.deviceB.p99,
          unit: "ms",
          baseline: bLastSummary.p99,
          baselineLabel: `B p99, ${maxDevices} subscribed devices`,
          ratio: ratio(floor.deviceB.p99, bLastSummary.p99),
        },
        {
          metric: `  floor: first-joined device p50 from the send loop's start, ${label}`,
          value: floor.firstJoined.p50,
          unit: "ms",
        },
      );
      section.notes.push(
        `WebSocket floor rows: the same ${maxDevices} devices (a first supabase-js client, ${
          maxDevices - 2
        } crowd ` +
          "sockets in their own process, B's supabase-js client joined last) on a bare WebSocket server in its " +
          "own process (Deno.serve + upgradeWebSocket like the endpoint; no database, WAL, token checks or channel " +
          "bookkeeping) that sends the same frame (B's last broadcast, the endpoint's encoder) to every socket in " +
          "join order, timed from just before its send loop. B's figure on the endpoint starts when A's call " +
          "returns, after the commit, when the endpoint is learning of the row from the WAL about then (one " +
          "subscribed device gets it < 1 ms after the return), so the two start at about the same point; the " +
          "floor's start is read by another process's clock (epoch-based, same machine). Ratio = floor ÷ device B's " +
          `figure on the endpoint; ${floor.lost} of ${opts.propagationUpdates} sends never reached B, ` +
          `${floor.incomplete} did not reach every crowd socket.`,
      );
    } catch (error) {
      section.notes.push(`WebSocket floor not measured: ${error instanceof Error ? error.message : error}`);
    }
  }

  section.notes.push(
    `${opts.propagationUpdates} updates per device count (after 3 warm-up updates), one at a time (10 ms apart): A's ` +
      "POST /functions/v1/progress, then wait for B's handler. Times are epoch-based high-resolution clocks " +
      "(performance.timeOrigin + performance.now()) of processes on the same machine.",
    "Devices: B (measured, the target rows) is a supabase-js client that joins LAST, so the endpoint sends it each " +
      "frame after every other socket: its figure includes the whole server-side fan-out. With more than 2 devices a " +
      "second supabase-js client joins FIRST (best position), and the remaining N - 2 are light WebSockets in a " +
      "separate process (bench/lib/crowd.ts: realtime-js's phx_join on the private topic, RLS-authorised, no " +
      "realtime-js decoding) that report when the last of them got each update. Last, the largest N again " +
      "spread over N users (each crowd socket joins its own user's topic, RLS-authorised): the endpoint holds N " +
      "connections but each update goes to B alone — a user has a handful of devices, so this is the usual shape.",
    "Path: write_reading_progress → broadcast trigger → realtime.messages row → commit → the local Realtime " +
      "endpoint learns of the row (see local/realtime/README.md, Delivery) → one encoded frame → N WebSockets → " +
      "realtime-js decode → handler.",
  );
  section.details = details;
  return section;

  async function measureWebSocketFloor(
    devices: number,
    shape: { event: string; payload: { record?: Record<string, unknown> } },
  ) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}bench/lib/wsfloor.ts`],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const stdin = child.stdin.getWriter();
    let crowd: Crowd | null = null;
    let leaveFirst: (() => Promise<void>) | null = null;
    let leaveB: (() => Promise<void>) | null = null;
    try {
      let readyTimer: ReturnType<typeof setTimeout> | undefined;
      const ready = await Promise.race([
        lineReader(child.stdout)(["FLOOR_READY "]),
        new Promise<never>((_, reject) => {
          readyTimer = setTimeout(() => reject(new Error("the floor server did not start in 20 s")), 20_000);
        }),
      ]).finally(() => clearTimeout(readyTimer));
      const floorUrl = `http://127.0.0.1:${Number(ready.slice("FLOOR_READY ".length))}`;
      const floorArrivals = new Map<number, number>();
      const floorFirst = new Map<number, number>();
      leaveFirst = await joinDevice(floorFirst, false, floorUrl);
      crowd = await startCrowd(
        realtimeWsUrl(floorUrl, stack.anonKey),
        Array.from({ length: devices - 2 }, () => ({ token: user.token, topic })),
      );
      leaveB = await joinDevice(floorArrivals, true, floorUrl);
      const deviceB = new Histogram();
      const firstJoined = new Histogram();
      const sent = new Map<number, number>();
      let lost = 0;
      const warmup = 3;
      for (let i = 0; i < opts.propagationUpdates + warmup; i++) {
        const chapter = base + i;
        const delivered = deliveryTo(floorArrivals, chapter);
        const res = await fetch(`${floorUrl}/send`, {
          method: "POST",
          body: JSON.stringify({
            topic,
            event: shape.event,
            payload: { ...shape.payload, record: { ...shape.payload.record, chapter } },
          }),
        });
        const { t0, sockets } = await res.json() as { t0: number; sockets: number };
        if (sockets !== devices) {
          throw new Error(`the floor server sent to ${sockets} sockets, not ${devices}`);
        }
        const ok = await delivered;
        if (i < warmup) continue;
        if (!ok) {
          lost++;
          continue;
        }
        sent.set(chapter, t0);
        deviceB.recordMs(floorArrivals.get(chapter)! - t0);
        const first = floorFirst.get(chapter);
        if (first !== undefined) firstJoined.recordMs(first - t0);
        await sleep(10);
      }
      base += 1000;
      const { incomplete } = await crowdCompletion(crowd, [...sent.keys()], devices - 2);
      return { deviceB: deviceB.summaryMs(), firstJoined: firstJoined.summaryMs(), lost, incomplete };
    } finally {
      await leaveB?.();
      await crowd?.stop();
      await leaveFirst?.();
      await stdin.close().catch(() => {});
      const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
      await child.status;
      clearTimeout(timer);
    }
  }
}
