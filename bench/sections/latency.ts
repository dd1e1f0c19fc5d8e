import type { SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";
export function latencySection(_ctx: Ctx): Promise<SectionResult> {
  return Promise.resolve({
    id: "latency",
    title: "latency",
    status: "not_measurable",
    reason: "section not implemented yet",
    rows: [],
    notes: [],
  });
}
