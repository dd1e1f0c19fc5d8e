// A RealtimeService on the stand-in client (fakeRealtimeClient.ts) whose changesSince calls are
// answered by hand, subscribed to one user, and the rows it is answered with.

import {
  type ChangesPage,
  RealtimeService,
  type RealtimeServiceOptions,
} from "../../../shared/realtime/realtimeService.ts";
import { waitFor } from "../../integration/realtime_support.ts";
import { fakeClient } from "./fakeRealtimeClient.ts";

export const USER = "00000000-0000-4000-8000-0000000000c1";

export function version(chapter: number) {
  return {
    user_id: USER,
    series_id: "series-1",
    chapter,
    page: chapter,
    percentage: 0,
    cleared: false,
    device_id: "phone",
    updated_at: new Date(Date.UTC(2026, 0, 1, 0, 0, chapter)).toISOString(),
    synced_at: new Date(Date.UTC(2026, 0, 1, 0, 0, chapter)).toISOString(),
    change_xid: String(100 + chapter),
    created_at: "2026-01-01T00:00:00.000000Z",
  };
}

export interface PendingCall {
  resolve: (page: ChangesPage) => void;
  reject: (error: Error) => void;
}

/**
 * A service on the stand-in client whose changesSince calls wait to be answered by hand (`calls`),
 * subscribed to USER (or `userId`); `changes` records what reached the handler. `end()` answers
 * what is still open and closes everything.
 */
export function handAnsweredService(
  options: Partial<RealtimeServiceOptions> = {},
  fake: ReturnType<typeof fakeClient> = fakeClient(),
  userId = USER,
) {
  const { client, channel } = fake;
  const calls: PendingCall[] = [];
  const service = new RealtimeService(client, {
    changesSince: () => new Promise((resolve, reject) => calls.push({ resolve, reject })),
    accessToken: "T1",
    requestTimeoutMs: 60_000,
    log: () => {},
    ...options,
  });
  const changes: { chapter: number; source: string }[] = [];
  const subscription = service.subscribeToProgress(
    userId,
    (change) => changes.push({ chapter: change.row.chapter, source: change.source }),
  );
  /**
   * Joins the link's channel (the fake client's first, or the `channelNumber`-th where another
   * service made channels on it before) and answers its catch-up with `rows`: the link is live.
   */
  const goLive = async (rows: unknown[] = [], channelNumber = 1) => {
    (await channel(channelNumber)).state!("SUBSCRIBED");
    await waitFor("the catch-up", () => calls.length === 1);
    calls[0].resolve({ changes: rows, next_cursor: "101", has_more: false });
    await waitFor("live", () => subscription.status === "live");
  };
  const end = async () => {
    for (const call of calls) call.resolve({ changes: [], next_cursor: "101", has_more: false });
    await subscription.unsubscribe();
    await service.close();
  };
  return {
    service,
    channel,
    calls,
    changes,
    subscription,
    goLive,
    end,
    timers: () => service.stats().timers,
  };
}
