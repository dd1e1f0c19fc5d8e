// Listens to realtime-js's heartbeat lifecycle (sent / ok / error / timeout / disconnected) beside
// whatever heartbeat callback the app installed, without replacing it.
//
// realtime-js has one heartbeat callback per client (`heartbeatCallback` option, `onHeartbeat()`),
// and onHeartbeat() wraps what it is given (the wrapper refreshes the token on "sent"): installing a
// second wrapped callback that calls the first would refresh the token twice per heartbeat, and
// there would be no way to put the app's own callback back. So the callback slot itself is
// chained: in realtime-js 2.1xx it lives on the client's socket adapter (the client has a getter
// only), in older versions on the client. One dispatcher per Realtime client calls the callback
// it found there first, then every watcher; the last watcher to leave puts the original back.

export type HeartbeatStatus = "sent" | "ok" | "error" | "timeout" | "disconnected" | string;
type HeartbeatCallback = (status: HeartbeatStatus, latency?: number) => void;

interface CallbackSlot {
  heartbeatCallback: HeartbeatCallback | undefined;
}

interface Hook {
  slot: CallbackSlot;
  original: HeartbeatCallback | undefined;
  dispatcher: HeartbeatCallback;
  watchers: Set<(status: HeartbeatStatus) => void>;
}

const hooks = new WeakMap<object, Hook>();

/**
 * Calls `watcher` with every heartbeat status of `realtime` (a supabase-js client's `.realtime`) until
 * the returned function is called. Returns null where the client has no heartbeat callback slot
 * this can chain into (a realtime-js that keeps it elsewhere): the caller goes without.
 * Call it again (it is idempotent per watcher) after the app may have installed a callback of its
 * own with onHeartbeat(): that replaced the dispatcher, and the dispatcher is chained over it anew.
 */
export function watchHeartbeats(
  realtime: object,
  watcher: (status: HeartbeatStatus) => void,
): (() => void) | null {
  let hook = hooks.get(realtime);
  if (hook && hook.slot.heartbeatCallback !== hook.dispatcher) {
    // The app installed its own callback over the dispatcher: chain over that one instead.
    hook.original = hook.slot.heartbeatCallback;
    if (!install(hook.slot, hook.dispatcher)) return null;
  }
  if (!hook) {
    const slot = findSlot(realtime);
    if (!slot) return null;
    const watchers = new Set<(status: HeartbeatStatus) => void>();
    const created: Hook = {
      slot,
      original: slot.heartbeatCallback,
      watchers,
      dispatcher: (status, latency) => {
        try {
          created.original?.(status, latency);
        } finally {
          for (const watch of [...watchers]) {
            try {
              watch(status);
            } catch {
              // A watcher's failure must not keep the others (or realtime-js) from their heartbeat.
            }
          }
        }
      },
    };
    if (!install(slot, created.dispatcher)) return null;
    hooks.set(realtime, created);
    hook = created;
  }
  const current = hook;
  current.watchers.add(watcher);
  return () => {
    current.watchers.delete(watcher);
    if (current.watchers.size > 0 || hooks.get(realtime) !== current) return;
    hooks.delete(realtime);
    // Put the original back only while the dispatcher is still in place (the app may have
    // installed a callback of its own since, which stays).
    if (current.slot.heartbeatCallback === current.dispatcher) install(current.slot, current.original);
  };
}

/** The object whose `heartbeatCallback` realtime-js calls: the socket adapter (2.1xx) or the client. */
function findSlot(realtime: object): CallbackSlot | null {
  const adapter = (realtime as { socketAdapter?: unknown }).socketAdapter;
  for (const candidate of [adapter, realtime]) {
    if (candidate && typeof candidate === "object" && "heartbeatCallback" in candidate) {
      const callback = (candidate as CallbackSlot).heartbeatCallback;
      if (callback === undefined || typeof callback === "function") return candidate as CallbackSlot;
    }
  }
  return null;
}

/** Sets the slot's callback; false where it cannot be set (a getter without a setter). */
function install(slot: CallbackSlot, callback: HeartbeatCallback | undefined): boolean {
  try {
    slot.heartbeatCallback = callback;
  } catch {
    return false;
  }
  return slot.heartbeatCallback === callback;
}
