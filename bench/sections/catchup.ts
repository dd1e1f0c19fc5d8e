import type { SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";
export function catchupSection(_ctx: Ctx): Promise<SectionResult> {
  return Promise.resolve({
    id: "catchup",
    title: "catchup",
    status: "not_measurable",
    reason: "section not implemented yet",
    rows: [],
    notes: [],
  });
}
