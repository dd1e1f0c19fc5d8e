"use client";

import Link from "next/link";
import { type FormEvent, useEffect, useRef, useState } from "react";
import type { ProgressRow } from "@/lib/client/types.ts";
import type { SeriesView } from "@/lib/client/syncStore.ts";
import { describePosition, formatWhen, savedBy } from "./format.ts";
import { SessionChanged, useRenderedForThisUser, useSync, useSyncSnapshot } from "./SyncProvider.tsx";

interface Draft {
  chapter: string;
  page: string;
  percent: string;
}

/** The line under the position: who saved it (savedBy). */
function sourceOf(deviceId: string, by: ReturnType<typeof savedBy>): string {
  if (by === "this device") return "From this device";
  if (by === "this browser") return `From this browser (its other device id ${deviceId})`;
  return `From device ${deviceId}`;
}

function toDraft(view: SeriesView | undefined): Draft {
  if (!view || view.cleared) return { chapter: "0", page: "0", percent: "0" };
  return { chapter: String(view.chapter), page: String(view.page), percent: String(Math.round(view.percentage * 1000) / 10) };
}

function parseDraft(draft: Draft): { chapter: number; page: number; percentage: number } | string {
  // Number("") is 0: a field cleared to type a new number would save (and send to every device) a reset.
  if (draft.chapter.trim() === "") return "Enter a chapter.";
  if (draft.page.trim() === "") return "Enter a page.";
  if (draft.percent.trim() === "") return "Enter a percentage.";
  const chapter = Number(draft.chapter);
  const page = Number(draft.page);
  const percent = Number(draft.percent);
  if (!Number.isInteger(chapter) || chapter < 0 || chapter > 100_000) return "Chapter must be a whole number from 0 to 100000.";
  if (!Number.isInteger(page) || page < 0 || page > 1_000_000) return "Page must be a whole number from 0 to 1000000.";
  if (!Number.isFinite(percent) || percent < 0 || percent > 100) return "Percentage must be between 0 and 100.";
  return { chapter, page, percentage: Math.round(percent * 10) / 1000 };
}

/** Where the reader is in one series: live, editable, optimistic, with a notice when another device wins. */
export function SeriesEditor(
  { seriesId, initialRow, renderedFor }: { seriesId: string; initialRow: ProgressRow | null; renderedFor: string },
) {
  return useRenderedForThisUser(renderedFor)
    ? <Editor seriesId={seriesId} initialRow={initialRow} />
    : <SessionChanged />;
}

function Editor({ seriesId, initialRow }: { seriesId: string; initialRow: ProgressRow | null }) {
  const { store, save, deviceId, status, syncAvailable } = useSync();
  const seeded = useRef<ProgressRow | null | undefined>(undefined);
  if (seeded.current !== initialRow) {
    if (initialRow) store.seed([initialRow]);
    seeded.current = initialRow;
  }
  const { bySeries, notices, browserDevices } = useSyncSnapshot();
  const view = bySeries.get(seriesId);
  const notice = notices.get(seriesId);
  const [draft, setDraft] = useState<Draft>(() => toDraft(view));
  const [dirty, setDirty] = useState(false);
  const [error, setError] = useState<string | null>(null);

  // Follow the live position until the reader starts typing.
  const versionKey = view ? `${view.updatedAt}|${view.deviceId}|${view.chapter}|${view.page}|${view.percentage}` : "";
  useEffect(() => {
    if (!dirty) setDraft(toDraft(view));
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [versionKey, dirty]);

  function update(field: keyof Draft, value: string) {
    setDraft((d) => ({ ...d, [field]: value }));
    setDirty(true);
    setError(null);
  }

  function submit(event: FormEvent) {
    event.preventDefault();
    const parsed = parseDraft(draft);
    if (typeof parsed === "string") {
      setError(parsed);
      return;
    }
    save(seriesId, parsed);
    setDirty(false);
  }

  function step(kind: "page" | "chapter") {
    const base = view && !view.cleared ? view : { chapter: 0, page: 0, percentage: 0 };
    const next = kind === "page"
      ? { chapter: base.chapter, page: Math.min(base.page + 1, 1_000_000), percentage: base.percentage }
      : { chapter: Math.min(base.chapter + 1, 100_000), page: 1, percentage: base.percentage };
    save(seriesId, next);
    setDirty(false);
  }

  const shown = view && !view.cleared ? view : null;
  return (
    <>
      <p><Link href="/">← Library</Link></p>
      <h1 data-testid="series-title">{seriesId}</h1>
      <section className="card">
        <h2>Now at</h2>
        <p aria-live="polite" data-testid="current-position" data-chapter={shown?.chapter ?? 0} data-page={shown?.page ?? 0} data-percentage={shown?.percentage ?? 0}>
          {shown ? describePosition(shown) : "Not started"}
        </p>
        {shown && (
          <p className="meta" data-testid="current-source" data-device={shown.deviceId}>
            {shown.pending ? (status === "offline" ? "Not sent yet (offline), kept on this device · " : "Saving… · ") : ""}
            {sourceOf(shown.deviceId, savedBy(shown.deviceId, deviceId, browserDevices))} · {formatWhen(shown.updatedAt)}
          </p>
        )}
      </section>

      {/* Only another device's win: a version under another of this browser's device ids is no loss (the store
          gives no notice for it, and takes one away once it knows the id as this browser's). */}
      {notice && (
        <div className="notice notice-conflict" role="alert" data-testid="conflict-notice" data-winner-device={notice.winner.device_id}>
          <strong>A newer position from another device wins.</strong>{" "}
          Your change on this device ({describePosition(notice.lost)}, {formatWhen(notice.lost.updated_at)}) was not
          applied: device <code>{notice.winner.device_id}</code> saved {describePosition(notice.winner)} at{" "}
          {formatWhen(notice.winner.updated_at)}, which is newer.{" "}
          <button type="button" className="secondary" onClick={() => store.dismissNotice(seriesId)}>Dismiss</button>
        </div>
      )}

      {/* Disabled, every field and button, until the page's script has run and this user's session is
          open (server-rendered, and on a slow device for a while after), as Sync now is: before, what was
          typed there was put back once the script ran, Next page and Next chapter did nothing,
          and Save (the form's own submit, with no handler yet) reloaded the page with the fields in its
          address. The hint under the buttons says why; it goes without moving them. */}
      <form className="card" onSubmit={submit} data-testid="position-form">
        <h2>Set position</h2>
        <fieldset className="plain" disabled={!syncAvailable}>
          <div className="position">
            <label>
              Chapter
              <input name="chapter" type="number" inputMode="numeric" required min={0} max={100000} step={1} value={draft.chapter} onChange={(e) => update("chapter", e.target.value)} />
            </label>
            <label>
              Page
              <input name="page" type="number" inputMode="numeric" required min={0} max={1000000} step={1} value={draft.page} onChange={(e) => update("page", e.target.value)} />
            </label>
            <label>
              Percentage
              <input name="percentage" type="number" inputMode="decimal" required min={0} max={100} step={0.1} value={draft.percent} onChange={(e) => update("percent", e.target.value)} />
            </label>
          </div>
          <div className="actions">
            <button type="submit" data-testid="save-position">Save position</button>
            <button type="button" className="secondary" onClick={() => step("page")} data-testid="next-page">Next page</button>
            <button type="button" className="secondary" onClick={() => step("chapter")} data-testid="next-chapter">Next chapter</button>
            {dirty && (
              <button type="button" className="secondary" onClick={() => { setDirty(false); setError(null); }}>Discard edits</button>
            )}
          </div>
        </fieldset>
        {!syncAvailable && (
          <p className="meta" data-testid="position-form-waiting">
            Loading… you can set your position once the page has finished loading.
          </p>
        )}
        {error && <p className="notice notice-error" role="alert">{error}</p>}
      </form>
    </>
  );
}
