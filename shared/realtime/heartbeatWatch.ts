// Listens to realtime-js's heartbeat lifecycle (sent / ok / error / timeout / disconnected) beside
// whatever heartbeat callback the app installs, before or after, without taking its place.
//
// realtime-js 2.1xx keeps one heartbeat callback per client, in its socket adapter: phoenix calls
// the socket's `heartbeatCallback`, which the adapter's accessor reads and writes, and the client's
// `heartbeatCallback` getter and `onHeartbeat()` (which wraps a callback so that "sent" refreshes
// the token) go through that accessor. A watcher that simply installed a callback calling the one it
// found could be displaced by the app's next onHeartbeat(), would refresh the token twice per
// heartbeat if it went through onHeartbeat() itself, and would loop forever with an app callback
// that calls "the previous one" (realtime.heartbeatCallback) in turn. So the dispatcher goes where
// phoenix calls it, and the adapter gets an accessor of its own in front of it: reading gives the
// app's callback (the dispatcher is invisible), writing (onHeartbeat) replaces the app's callback
// behind the dispatcher. One dispatcher per Realtime client calls the app's callback first, then
// every watcher; the last watcher to leave removes the accessor and gives the slot the app's
// callback back.

export type HeartbeatStatus = "sent" | "ok" | "error" | "timeout" | "disconnected" | string;
type HeartbeatCallback = (status: HeartbeatStatus, latency?: number) => void;

interface Hook {
  adapter: object;
  /** The app's callback (realtime-js's wrapper of it): what reading the slot gives. */
  appCallback: HeartbeatCallback | undefined;
  dispatcher: HeartbeatCallback;
  watchers: Set<(status: HeartbeatStatus) => void>;
}

const hooks = new WeakMap<object, Hook>();

/**
 * Calls `watcher` with every heartbeat status of `realtime` (a supabase-js client's `.realtime`) until
 * the returned function is called (calling this again for a watcher already added changes nothing).
 * Returns null where the client keeps its heartbeat callback somewhere this does not know (another
 * realtime-js than 2.1xx's socket adapter): the caller goes without.
 */
export function watchHeartbeats(
  realtime: object,
  watcher: (status: HeartbeatStatus) => void,
): (() => void) | null {
  const hook = hooks.get(realtime) ?? install(realtime);
  if (!hook) return null;
  hook.watchers.add(watcher);
  return () => {
    hook.watchers.delete(watcher);
    if (hook.watchers.size > 0 || hooks.get(realtime) !== hook) return;
    hooks.delete(realtime);
    // The adapter's own accessor again (the prototype's), holding the app's callback.
    delete (hook.adapter as { heartbeatCallback?: unknown }).heartbeatCallback;
    (hook.adapter as { heartbeatCallback?: unknown }).heartbeatCallback = hook.appCallback;
  };
}

function install(realtime: object): Hook | null {
  const adapter = (realtime as { socketAdapter?: unknown }).socketAdapter;
  if (!adapter || typeof adapter !== "object") return null;
  // realtime-js 2.1xx: an accessor pair on the adapter's class, none on the instance.
  if (Object.getOwnPropertyDescriptor(adapter, "heartbeatCallback")) return null;
  const inherited = accessorOf(Object.getPrototypeOf(adapter), "heartbeatCallback");
  if (!inherited?.get || !inherited.set) return null;
  const current = inherited.get.call(adapter);
  if (current !== undefined && typeof current !== "function") return null;

  let dispatching = false;
  const hook: Hook = {
    adapter,
    appCallback: current as HeartbeatCallback | undefined,
    watchers: new Set(),
    dispatcher: (status, latency) => {
      // Never re-entered: an app callback that calls the dispatcher it somehow got hold of would
      // otherwise loop.
      if (dispatching) return;
      dispatching = true;
      try {
        hook.appCallback?.(status, latency);
      } finally {
        dispatching = false;
        for (const watch of [...hook.watchers]) {
          try {
            watch(status);
          } catch {
            // A watcher's failure must not keep the others (or realtime-js) from their heartbeat.
          }
        }
      }
    },
  };
  inherited.set.call(adapter, hook.dispatcher); // where phoenix calls it
  if (inherited.get.call(adapter) !== hook.dispatcher) return null;
  Object.defineProperty(adapter, "heartbeatCallback", {
    configurable: true,
    get: () => hook.appCallback,
    set: (callback: HeartbeatCallback | undefined) => {
      hook.appCallback = callback;
    },
  });
  hooks.set(realtime, hook);
  return hook;
}

function accessorOf(object: object | null, name: string): PropertyDescriptor | undefined {
  for (let o = object; o; o = Object.getPrototypeOf(o)) {
    const descriptor = Object.getOwnPropertyDescriptor(o, name);
    if (descriptor) return descriptor.get || descriptor.set ? descriptor : undefined;
  }
  return undefined;
}
