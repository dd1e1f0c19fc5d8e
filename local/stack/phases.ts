// The phases of a stack's start, timed for the benchmark's cold-start section (bench/sections/startup.ts,
// through bench/lib/stack_child.ts): each step a start awaits says how long it took, so that a start that
// grew between two runs shows where the time went.

/** Told as each phase of a start ends: its name and how long it took (ms). */
export type OnPhase = (name: string, ms: number) => void;

/**
 * Runs `step` and, once it has ended without an error, tells `onPhase` (when given) how long it took.
 * Without onPhase it is the step itself (its own promise): a start nobody times (npm start, the tests'
 * stacks) goes on from each step as it did before steps were timed, no turn later and no clock read.
 */
export function timed<T>(
  onPhase: OnPhase | undefined,
  name: string,
  step: () => Promise<T>,
): Promise<T> {
  if (!onPhase) return step();
  const started = performance.now();
  return step().then((result) => {
    onPhase(name, performance.now() - started);
    return result;
  });
}
