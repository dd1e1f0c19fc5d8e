"use client";

import { useSync, useSyncSnapshot } from "./SyncProvider.tsx";

const LABELS = {
  live: "Live",
  polling: "Polling",
  offline: "Offline",
  connecting: "Connecting…",
} as const;

const TITLES = {
  live: "Changes from your other devices appear instantly (Realtime).",
  // Also shown while a first join is slow to answer (the service reads after joinGraceMs): "not
  // connected", not "unavailable".
  polling: "Not connected to Realtime yet; checking for changes every few seconds.",
  offline: "No connection. Your changes are kept on this device and sent when you are back online.",
  connecting: "Connecting to Realtime…",
} as const;

const SYNC_NOW_TITLES = {
  idle: "Send the changes waiting on this device now and check for changes from your other devices.",
  syncing: "Syncing…",
  done: "Synced: nothing waiting on this device.",
  failed: "Not everything could be synced; it is tried again by itself.",
} as const;

export function ConnectionStatus() {
  const { status, deviceId, syncNow, syncAvailable, syncNowState, sending } = useSync();
  const { pendingCount } = useSyncSnapshot();
  const syncing = syncNowState === "syncing";
  const busy = syncing || sending;
  // Disabled until the page's script has run (server-rendered, and on a slow device for a while after):
  // a click there did nothing and was not replayed, so the button says it cannot act yet.
  return (
    <span className="topbar-right">
      {/* The outcome shows where the status already does: the waiting count, the status, the error banner. */}
      <button
        type="button"
        className="secondary sync-now"
        data-testid="sync-now"
        data-state={syncNowState}
        disabled={busy || !syncAvailable}
        aria-busy={busy}
        title={syncAvailable ? SYNC_NOW_TITLES[syncNowState] : "Available once the page has finished loading."}
        onClick={syncNow}
      >
        <span>{busy ? "Syncing…" : "Sync now"}</span>
        {/* The other label, unseen and unread: the button is as wide as the wider of the two whatever it
            says, so the status after it keeps its place when a send starts (as one does when the script
            runs and finds changes waiting). */}
        <span className="sizer" aria-hidden="true">{busy ? "Sync now" : "Syncing…"}</span>
      </button>
      <span className="status" role="status" aria-live="polite" data-testid="connection-status" data-status={status} title={TITLES[status]}>
        <span className="dot" aria-hidden="true" />
        {LABELS[status]}
      </span>
      {/* After the status, not between it and Sync now: a count that appears (writes of an earlier visit
          found once the script runs, or a save) moves neither. */}
      {pendingCount > 0 && (
        <span className="pending" data-testid="pending-count" data-count={pendingCount}>
          {pendingCount} change{pendingCount === 1 ? "" : "s"} waiting to sync
        </span>
      )}
      <span className="meta" data-testid="device-id" title="This device's id (one per browser profile)">
        {deviceId ?? ""}
      </span>
    </span>
  );
}

/**
 * What the reader must know of the sync: a write refused and dropped (in any tab), one refused again and
 * again, or, after Sync now, a write not saved yet or a read of the server's changes that failed.
 */
export function SyncErrorBanner() {
  const { store } = useSync();
  const { lastError } = useSyncSnapshot();
  if (!lastError) return null;
  return (
    <p className="card sync-error" role="alert" data-testid="sync-error">
      {lastError}{" "}
      <button type="button" className="secondary" onClick={() => store.dismissError()}>Dismiss</button>
    </p>
  );
}
