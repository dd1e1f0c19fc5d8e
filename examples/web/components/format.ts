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
