import type { Report } from "./lib/report.ts";
export function renderDocs(_report: Report, results: string): string {
  return `# Benchmarks\n\n${results}\n`;
}
