"use client";

import Link from "next/link";
import { useRouter } from "next/navigation";
import { type FormEvent, useRef, useState } from "react";
import type { ProgressRow } from "@/lib/client/types.ts";
import { describePosition, formatWhen, savedBy } from "./format.ts";
import { SessionChanged, useRenderedForThisUser, useSync, useSyncSnapshot } from "./SyncProvider.tsx";
import { SERIES_ID, seriesHref } from "@/lib/seriesHref.ts";

/** The library the server loaded for `renderedFor`, kept current by Realtime (and this device's own writes). */
export function LiveLibrary({ initialRows, renderedFor }: { initialRows: ProgressRow[]; renderedFor: string }) {
  return useRenderedForThisUser(renderedFor) ? <Library initialRows={initialRows} /> : <SessionChanged />;
}

function Library({ initialRows }: { initialRows: ProgressRow[] }) {
  const { store, deviceId } = useSync();
  const seeded = useRef<ProgressRow[] | null>(null);
  if (seeded.current !== initialRows) {
    store.seed(initialRows);
    seeded.current = initialRows;
  }
  const { library, browserDevices } = useSyncSnapshot();

  return (
    <section className="card">
      <h2>Your library</h2>
      {library.length === 0 ? (
        <p className="muted" data-testid="library-empty">Nothing read yet. Open a series below to start.</p>
      ) : (
        <ul className="library" data-testid="library">
          {library.map((item) => (
            <li key={item.seriesId} data-testid={`library-item-${item.seriesId}`} data-series={item.seriesId}>
              <div>
                <Link className="series" href={seriesHref(item.seriesId)}>{item.seriesId}</Link>
                <div className="where" data-testid="library-position">{describePosition(item)}</div>
                <div className="meta">
                  {item.pending ? "saving… · " : ""}
                  {libraryDevice(item.deviceId, savedBy(item.deviceId, deviceId, browserDevices))} · {formatWhen(item.updatedAt)}
                </div>
              </div>
              <div className="bar" aria-hidden="true">
                <span style={{ width: `${Math.round(item.percentage * 100)}%` }} />
              </div>
            </li>
          ))}
        </ul>
      )}
      <OpenSeries />
    </section>
  );
}

/** Who saved a series' position, in the library's line (savedBy). */
function libraryDevice(deviceId: string, by: ReturnType<typeof savedBy>): string {
  if (by === "this device") return "this device";
  return by === "this browser" ? `this browser (its other device id ${deviceId})` : deviceId;
}

function OpenSeries() {
  const router = useRouter();
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(null);
  function submit(event: FormEvent) {
    event.preventDefault();
    const id = value.trim();
    if (!SERIES_ID.test(id)) {
      setError("Use letters, digits, '.', '_', ':' or '-' (start with a letter or digit).");
      return;
    }
    router.push(seriesHref(id));
  }
  // Submitted before the page's script has run (a slow device), the form's own GET opens the series
  // (app/open-series/route.ts redirects to its page); once it has, submit() checks the id and opens it.
  return (
    <form action="/open-series" method="get" onSubmit={submit} className="actions" style={{ marginTop: 16 }} data-testid="open-series">
      <input
        name="id"
        aria-label="Series id"
        placeholder="series id, e.g. one-piece"
        value={value}
        onChange={(e) => {
          setValue(e.target.value);
          setError(null);
        }}
      />
      <button type="submit" className="secondary">Open series</button>
      {error && <p className="notice notice-error" role="alert">{error}</p>}
    </form>
  );
}
