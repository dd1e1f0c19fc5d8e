import type { SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";
export function propagationSection(_ctx: Ctx): Promise<SectionResult> {
  return Promise.resolve({
    id: "propagation",
    title: "propagation",
    status: "not_measurable",
    reason: "section not implemented yet",
    rows: [],
    notes: [],
  });
}
