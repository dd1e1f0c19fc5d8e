// A test's way to tell "already settled" from "waits for something": the pool tests ask it whether a paced
// connection attempt or a turn went at once, without measuring time.

/** Which settles first: `promise`, or a timer of 0 ms started now ("timer"): whether it waited. */
export async function beforeATimer(promise: Promise<unknown>): Promise<"settled" | "timer"> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const result = await Promise.race([
    promise.then(() => "settled" as const, () => "settled" as const),
    new Promise<"timer">((resolve) => timer = setTimeout(() => resolve("timer"), 0)),
  ]);
  clearTimeout(timer);
  return result;
}
