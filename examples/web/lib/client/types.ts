// The pieces of shared/ the client uses, in one place.
export type { ProgressRow } from "@shared/realtime/progressContract.ts";
