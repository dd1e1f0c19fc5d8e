// One device id per browser profile (each Playwright context, each browser, each phone), kept in
// localStorage. It is the tie-breaker of last-write-wins and tells the reader which device won.

const KEY = "readsync.deviceId";
const FORMAT = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

function randomSuffix(): string {
  const bytes = new Uint8Array(5);
  crypto.getRandomValues(bytes); // works outside secure contexts too, unlike randomUUID()
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function getDeviceId(): string {
  let id: string | null = null;
  try {
    id = localStorage.getItem(KEY);
  } catch {
    // Storage disabled: a per-tab id still works, it just does not survive a reload.
  }
  if (!id || !FORMAT.test(id)) {
    id = `web-${randomSuffix()}`;
    try {
      localStorage.setItem(KEY, id);
    } catch {
      // see above
    }
  }
  return id;
}
