import type { SectionResult } from "../lib/report.ts";
import type { Ctx } from "./context.ts";
export function readsSection(_ctx: Ctx): Promise<SectionResult> {
  return Promise.resolve({
    id: "reads",
    title: "2. Reads",
    status: "not_measurable",
    reason: "section not implemented yet",
    rows: [],
    notes: [],
  });
}
