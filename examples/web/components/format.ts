export function formatPercent(fraction: number): string {
  return `${Math.round(fraction * 1000) / 10}%`;
}

// Server and browser must print the same text (or hydration fails), so times are formatted with a
// fixed locale and time zone rather than the machine's. Milliseconds are shown because they decide
// which of two writes wins.
const WHEN = new Intl.DateTimeFormat("en-GB", {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  fractionalSecondDigits: 3,
  hourCycle: "h23",
  timeZone: "UTC",
});

export function formatWhen(iso: string): string {
  return `${WHEN.format(new Date(iso))} UTC`;
}

export function describePosition(p: { chapter: number; page: number; percentage: number }): string {
  return `Chapter ${p.chapter} · Page ${p.page} · ${formatPercent(p.percentage)}`;
}

/**
 * Who saved a version of `deviceId`, as the page names it: this device (`thisDevice`, the id this tab writes
 * with; null until it has read it), this browser under another of its device ids (`browserDevices`, the store's
 * snapshot: once the site's data is cleared, a page open through the clear and a tab opened after it write with
 * two, see lib/client/deviceId.ts), or another device.
 */
export function savedBy(
  deviceId: string,
  thisDevice: string | null,
  browserDevices: ReadonlySet<string>,
): "this device" | "this browser" | "another device" {
  if (deviceId === thisDevice) return "this device";
  return thisDevice !== null && browserDevices.has(deviceId) ? "this browser" : "another device";
}
