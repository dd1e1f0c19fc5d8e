// The phases of a stack's start, timed for the benchmark's cold-start section (bench/sections/startup.ts,
// through bench/lib/stack_child.ts): each step a start awaits says how long it took, so that a start that
// grew between two runs shows where the time went.

/** Told as each phase of a start ends: its name and how long it took (ms). */
export type OnPhase = (name: string, ms: number) => void;

/** Runs `step` and, once it has ended without an error, tells `onPhase` (when given) how long it took. */
export async function timed<T>(
  onPhase: OnPhase | undefined,
  name: string,
  step: () => Promise<T>,
): Promise<T> {
  const started = performance.now();
  const result = await step();
  onPhase?.(name, performance.now() - started);
  return result;
}
