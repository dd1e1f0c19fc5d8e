// Tests that need a process of their own (an exit cleanup that must run once per process, a Deno.serve
// mode set per process, a stack whose runCleanups the test runner must not run) run Deno in a child.

import assert from "node:assert/strict";

/** A child Deno's exit code and its output, decoded. */
export interface DenoChildOutput {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs Deno with `args` (e.g. `["eval", script]`) in a process of its own and returns how it ended. A hang
 * guard only: a child still running after `timeoutMs` is killed and the call rejects.
 */
export async function runDenoChild(
  args: string[],
  options: { timeoutMs: number; cwd?: string },
): Promise<DenoChildOutput> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: options.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const { code, stdout, stderr } = await Promise.race([
      child.output(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`the child did not end within ${options.timeoutMs / 1000} s`)),
          options.timeoutMs,
        );
      }),
    ]);
    return { code, stdout: new TextDecoder().decode(stdout), stderr: new TextDecoder().decode(stderr) };
  } finally {
    clearTimeout(timer);
    try {
      child.kill("SIGKILL");
    } catch { /* ended */ }
  }
}

/** The last line a child printed, parsed as JSON, once it has exited 0 (else its output is the message). */
export function lastJsonLine({ code, stdout, stderr }: DenoChildOutput): unknown {
  assert.equal(code, 0, `${stdout}\n${stderr}`);
  return JSON.parse(stdout.trim().split("\n").pop()!);
}
