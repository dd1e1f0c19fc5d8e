// Result shapes, the console table, the JSON report and the markdown summary.

import type { Machine } from "./db.ts";

export interface Row {
  metric: string;
  value: number | null;
  unit: string;
  /** The figure measured in the same run that `value` is compared with. */
  baseline?: number | null;
  baselineLabel?: string;
  /** value / baseline (or as described by ratioLabel). */
  ratio?: number | null;
  target?: string;
  met?: boolean | null;
}

export type Status = "ok" | "not_measurable" | "skipped" | "error";

export interface SectionResult {
  id: string;
  title: string;
  status: Status;
  reason?: string;
  rows: Row[];
  notes: string[];
  details?: unknown;
}

export interface Report {
  date: string;
  command: string;
  options: Record<string, unknown>;
  target: { database: string; api: string };
  machine: Machine | null;
  loadAverageEnd?: number[];
  durationSeconds?: number;
  sections: SectionResult[];
}

/** The middle value (the mean of the middle two for an even count); NaN for none. */
export const median = (xs: number[]): number => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
};

export const ratio = (value: number | null | undefined, baseline: number | null | undefined) =>
  value == null || baseline == null || !Number.isFinite(value) || !Number.isFinite(baseline) || baseline === 0
    ? null
    : Math.round((value / baseline) * 100) / 100;

function fmt(n: number | null | undefined, unit = ""): string {
  if (n == null || Number.isNaN(n)) return "–";
  const abs = Math.abs(n);
  const s = abs >= 1000
    ? Math.round(n).toString()
    : abs >= 100
    ? n.toFixed(0)
    : abs >= 10
    ? n.toFixed(1)
    : n.toFixed(2);
  return unit ? `${s} ${unit}` : s;
}

const metText = (met: boolean | null | undefined) => (met === true ? "met" : met === false ? "MISSED" : "");

function cells(row: Row): string[] {
  return [
    row.metric,
    fmt(row.value, row.unit),
    row.baseline == null
      ? ""
      : `${fmt(row.baseline, row.unit)}${row.baselineLabel ? ` (${row.baselineLabel})` : ""}`,
    row.ratio == null ? "" : `${row.ratio.toFixed(2)}×`,
    row.target ?? "",
    metText(row.met),
  ];
}

const HEADER = ["metric", "value", "baseline (same run)", "ratio", "target", ""];

export function consoleTable(report: Report): string {
  const lines: string[] = [];
  for (const s of report.sections) {
    lines.push("", `== ${s.title} ==`);
    if (s.status !== "ok") {
      lines.push(`   ${s.status === "not_measurable" ? "not yet measurable" : s.status}: ${s.reason ?? ""}`);
    }
    if (s.rows.length > 0) {
      const table = [HEADER, ...s.rows.map(cells)];
      const widths = HEADER.map((_, i) => Math.max(...table.map((r) => r[i].length)));
      for (const r of table) lines.push("   " + r.map((c, i) => c.padEnd(widths[i])).join("  ").trimEnd());
    }
    for (const n of s.notes) lines.push(`   - ${n}`);
  }
  return lines.join("\n");
}

export function markdown(report: Report): string {
  const m = report.machine;
  const out: string[] = [];
  out.push(
    `Run finished ${report.date} with \`${report.command}\` (${report.durationSeconds ?? "?"} s).`,
    "",
  );
  if (m) {
    out.push(
      `Machine: ${m.nproc} CPU (${m.cpu}), ${m.memoryGiB} GiB RAM, Linux ${m.kernel}, ${m.pgVersion}, Deno ${m.deno}; ` +
        `load average ${m.loadAverage.map((x) => x.toFixed(2)).join(" / ")} at start` +
        (report.loadAverageEnd
          ? `, ${report.loadAverageEnd.map((x) => x.toFixed(2)).join(" / ")} at end`
          : "") +
        ` (shared machine: other work may have been running; compare ratios, not absolute figures).`,
      "",
      `PostgreSQL settings: ${Object.entries(m.pgSettings).map(([k, v]) => `${k}=${v}`).join(", ")}.`,
      "",
    );
  }
  out.push(`Target: database ${report.target.database}; API ${report.target.api}.`, "");
  for (const s of report.sections) {
    out.push(`### ${s.title}`, "");
    if (s.status !== "ok") {
      out.push(
        `**${s.status === "not_measurable" ? "Not yet measurable" : s.status}:** ${s.reason ?? ""}`,
        "",
      );
    }
    if (s.rows.length > 0) {
      out.push(
        `| ${HEADER.map((h) => h || "target met").join(" | ")} |`,
        `| ${HEADER.map(() => "---").join(" | ")} |`,
      );
      for (const r of s.rows) out.push(`| ${cells(r).map((c) => c.replaceAll("|", "\\|")).join(" | ")} |`);
      out.push("");
    }
    for (const n of s.notes) out.push(`- ${n}`);
    if (s.notes.length) out.push("");
  }
  return out.join("\n");
}
