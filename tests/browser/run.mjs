// Browser tests of the web app (examples/web) against a running readsync stack:
//
//   node tests/browser/run.mjs [name filter] [--update-docs]
//
// Needs the stack in the environment, as `npm test` provides it to every suite: SUPABASE_URL,
// SUPABASE_ANON_KEY and, for the local stack, SUPABASE_JWT_SECRET + SUPABASE_DB_URL (development
// sign-in, users created on the fly). Against a real project (no JWT secret) users are created with
// SUPABASE_SERVICE_ROLE_KEY through the Auth admin API and sign in with a password.
// `deno run -A tests/browser/standalone.ts` starts a local stack first.
//
// It serves the app itself (examples/web/serve.mjs: npm ci + next build when stale, then next start),
// or uses READSYNC_WEB_URL when set. Chromium is Debian's (/usr/bin/chromium, installed with apt as
// root when missing; otherwise every test is skipped with the reason printed).
//
// Devices: two browser contexts of one user (each its own localStorage, hence its own device id)
// and a third context for another user. Screenshots go to test-artifacts/browser/; the two-devices
// picture is also written to docs/two-devices.png when that file is missing or with --update-docs.
//
// Last line: `browser: N passed, N failed` (`, N skipped` when Chromium is unavailable). Exit code 0
// only when nothing failed.

import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import process from "node:process";
import {
  ARTIFACTS,
  assert,
  assertEqual,
  CHROMIUM_ARGS,
  ensureArtifactsDir,
  eventually,
  findChromium,
  REPO_ROOT,
  requireFromWebApp,
  runTests,
  SkipTest,
  writeArtifact,
} from "./harness.mjs";

const log = (line) => console.log(`[browser] ${line}`);
const args = process.argv.slice(2);
const filter = args.find((a) => !a.startsWith("--"));
const updateDocs = args.includes("--update-docs");
const DOCS_PICTURE = path.join(REPO_ROOT, "docs", "two-devices.png");

const TESTS = [
  "sign-in gives each browser context its own device and the library loads on the server",
  "a change on one device appears on the other without a reload, never for another user",
  "an offline device keeps working; its older edit loses on reconnect and says so",
  "an offline device's newer edit wins on reconnect and reaches the other device live",
  "development sign-in is clearly labelled and refused without READSYNC_DEV_SIGNIN",
  "the library and a series page show their error state (error.tsx) when the progress function cannot be reached, and Try again recovers once it answers",
  "with Realtime unreachable a device says Polling and still receives changes, without a reload",
  "the server sends signed-out requests to sign-in and sign-out ends the session",
  "redirects stay on the site's own origin, a cross-site sign-out is refused, a failed sign-in link says so",
  "Supabase mode (stand-in Auth): httpOnly session cookies, an Auth outage is not a sign-out (its Try again works before the page's script has run), sign-out ends this browser only, magic links lead to READSYNC_SITE_URL, not to the host the request came to",
  "no page can be framed by another site, and a malformed address is a 400, not a server error",
  "a tab left open while the browser signs out and in as another reader leaves at once, shows that reader when opened again and never writes their progress into the old account",
  "a write that cannot be saved says so: a proxy's 400 keeps it queued until it is sent, a write the API refuses is dropped with a message that can be dismissed",
  "with site data blocked (localStorage throws) the reader still loads and saves",
  "a tab whose Realtime socket went silent shows the other device's page as soon as it is shown again, not a minute later",
  "no device had a script error (hydration included)",
  "a field cleared to type a new number is not saved as 0 (which would reset every device)",
  "Sign out in one tab ends the session in the browser's other open tabs at once: they leave for sign-in and save nothing more",
  "a series whose id ends in .rsc (a valid id), opened from the library, is still a page on a full load (reload, bookmark)",
  "two tabs of one browser send their shared outbox one at a time: offline edits made in both are stored once each when the browser is back online (a repeat is answered as one), never a request from each tab at once",
  "Sync now sends a write that waited while the API was unreachable as soon as it is pressed, not at the backoff's next step, and is disabled while it runs",
  "Sign out works before the page's script has run: a click signs out (a plain form POST), and the button stays where it was when the script runs, so a press begun before it still signs out",
  "Sign out in one tab while the other tab's check of /auth/token fails (no network): that tab asks again with the backoff and leaves, and sends nothing meanwhile",
  "before the page's script has run, Open series opens the series (a plain GET form) and Sync now is shown disabled; once it runs Sync now works, and the status area (one .topbar-right, in the header) keeps its place",
  "on a slow device, before the series page's script has run, its position form and Next page / Next chapter are shown disabled with a hint (a press did nothing, Save reloaded the page with the fields in its address); once it runs they work, in the same places",
  "on a slow device, an invalid id in Open series before the script has run gets a readable page (a 400) that keeps what was typed and opens the corrected id; an API-style caller still gets the JSON code",
  "on a slow device, writes waiting from an earlier visit are counted once the page's script runs, after Sync now and the status, which keep their places",
  "the web app binds its port itself: a port asked for that another server holds is refused, naming it (that server is never taken for the app)",
  "the web app binds its port itself: with none asked for, it serves where its URL says (not on a port another server holds)",
  "a web app server that says it is ready without the line naming its port is refused at once, showing what it printed",
  "the site's data cleared with a page open: a tab opened then (a new device id) names the page's later save, under the old id, as this browser's (its other device id), on the series page and in the library, not as another device's",
  "npm start with READSYNC_API_HOST=0.0.0.0: a device that opens the web app at another address of this machine signs in, syncs live and saves through the API at that same address, never at 127.0.0.1",
];

function summary(passed, failed, skipped = 0) {
  console.log(`browser: ${passed} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ""}`);
}

function env(name) {
  const value = process.env[name];
  return value && value.trim() !== "" ? value.trim() : undefined;
}

async function main() {
  const supabaseUrl = env("SUPABASE_URL");
  const anonKey = env("SUPABASE_ANON_KEY");
  if (!supabaseUrl || !anonKey) {
    log(
      "SUPABASE_URL / SUPABASE_ANON_KEY are not set: run through `npm test` or tests/browser/standalone.ts",
    );
    summary(0, 1);
    return 1;
  }
  const jwtSecret = env("SUPABASE_JWT_SECRET");
  const dbUrl = env("SUPABASE_DB_URL");
  const serviceRoleKey = env("SUPABASE_SERVICE_ROLE_KEY");
  const devMode = Boolean(jwtSecret && dbUrl);
  if (!devMode && !serviceRoleKey) {
    log(
      "need SUPABASE_JWT_SECRET + SUPABASE_DB_URL (local stack) or SUPABASE_SERVICE_ROLE_KEY (real project)",
    );
    summary(0, 1);
    return 1;
  }

  const chromiumPath = findChromium(log);
  if (chromiumPath.skip) {
    log(`SKIPPED: ${chromiumPath.skip}`);
    summary(0, 0, TESTS.length);
    return 0;
  }

  const started = Date.now();
  // Run newest first at the end, or on a stop (Ctrl-C, SIGTERM, SIGHUP: exit 130, 143, 129), which also
  // ends the web app's npm ci, next build or next start under way (and frees its build lock), as in npm start.
  const { exitCleanups, startWebApp } = await import("../../examples/web/serve.mjs");
  const { onCleanup, runCleanups, removeSignalHandlers, stopping } = exitCleanups({
    log: (line) => log(line),
  });
  /**
   * startWebApp with this run's cleanups: the run's own web app and every test's (build: "never"), so that
   * a stop ends a next start under way (SIGTERM to its group, then SIGKILL) and stops one that serves; and
   * with `stopping`, so that once stopped it begins no step more (an npm ci or next build that exits 0 as
   * the stop ends it going on to next build or next start, only for its cleanup to end that at once).
   * @param {import("../../examples/web/serve.d.ts").WebAppOptions} options
   */
  const startRunWebApp = (options) => startWebApp({ ...options, onCleanup, stopping });
  /**
   * A web app server of a test's own (the suite's build; password sign-in, quiet), against the stack in
   * the environment; `options` as startWebApp's (port, startTimeoutMs, env).
   */
  const startOwnWebApp = (options) =>
    startRunWebApp({
      apiUrl: supabaseUrl,
      anonKey,
      devSignIn: false,
      build: "never",
      log: () => {},
      ...options,
    });

  try {
    // ---------------------------------------------------------------- the app, the browser, the DB
    let webUrl = env("READSYNC_WEB_URL");
    let webApp;
    if (!webUrl) {
      // Registered with this run's cleanups from its npm ci on: a stop ends the step under way, and the
      // server (registered until stop()) is stopped by a stop or at the end of the run.
      webApp = await startRunWebApp({
        apiUrl: supabaseUrl,
        anonKey,
        jwtSecret,
        dbUrl,
        devSignIn: devMode,
        log,
      });
      webUrl = webApp.url;
    }
    const { chromium } = requireFromWebApp("playwright-core");
    const browser = await chromium.launch({
      executablePath: chromiumPath.path,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
    });
    onCleanup(() => browser.close());
    log(
      `Chromium ${browser.version()}, app ${webUrl}, ${devMode ? "development sign-in" : "password sign-in"}`,
    );
    let sql = null;
    if (dbUrl) {
      const postgres = requireFromWebApp("postgres");
      sql = postgres(dbUrl, { max: 1, onnotice: () => {} });
      onCleanup(() => sql.end({ timeout: 2 }));
    }
    ensureArtifactsDir();

    // ---------------------------------------------------------------- users and devices
    const run = Date.now().toString(36);
    const emailA = `reader-a-${run}@readsync.test`;
    const emailB = `reader-b-${run}@readsync.test`;
    const passwords = new Map();
    if (!devMode) {
      for (const email of [emailA, emailB]) {
        passwords.set(email, await createAuthUser(supabaseUrl, serviceRoleKey, email));
      }
    }

    const viewport = { width: 480, height: 820 };
    /**
     * A hang guard for one navigation or cross-tab step. A starved browser (CI under load, the
     * suite's own Chromium, Next and PostgreSQL on two shared cores) took more than 30 s to fire a
     * page's `load` (every script of the Next page parsed and run) after its HTML arrived.
     */
    const STEP_GUARD_MS = 60_000;
    /**
     * Resolves once `page` is at `pathname`: the navigation committed (the server's answer is being
     * shown, its cookies set), which is what a redirect, a sign-in or a sign-out tells; not the new
     * page's `load`, which says nothing more about the session and under load came too late.
     */
    const arrivedAt = (page, pathname) =>
      page.waitForURL((url) => url.pathname === pathname, { waitUntil: "commit", timeout: STEP_GUARD_MS });
    /**
     * Resolves once a reader page's script runs (hydrated: SyncProvider's effect shows the device id).
     * Its server-rendered HTML, Sign out button included, is there well before. (Under a starved CPU a
     * Sign out clicked in between once sent no request: the press landed on the button, which then
     * moved as the script filled in the status beside it, and the release landed beside it. Sign out
     * now keeps its place and works before the script has run: TESTS[21].)
     */
    const hydrated = (page) =>
      eventually(async () => {
        assert((await page.getByTestId("device-id").textContent())?.trim(), "device id shown");
      }, { timeoutMs: STEP_GUARD_MS, what: "the page's script to run (device id shown)" });
    /**
     * Holds every script `page` asks for (Next's chunks; not its stylesheets) until `letGo()`. A script
     * runs only once its answer arrives, so while they are held the page is its server-rendered HTML
     * and nothing else: not hydrated. `allHeld()` resolves once each script the page names (its
     * `<script src>`) has been asked for and is held, the signal that the page is in that state.
     */
    const holdScripts = async (page) => {
      const held = new Set();
      let holding = true;
      let release = () => {};
      const gate = new Promise((resolve) => release = resolve);
      const isScript = (url) => url.pathname.startsWith("/_next/static/") && url.pathname.endsWith(".js");
      const handler = async (route) => {
        if (holding) {
          held.add(new URL(route.request().url()).pathname);
          await gate;
        }
        await route.continue().catch(() => {}); // the page left meanwhile
      };
      await page.route(isScript, handler);
      return {
        allHeld: () =>
          eventually(async () => {
            const named = await page.evaluate(() =>
              [...document.querySelectorAll("script[src]")].filter((s) => !s.noModule).map((s) =>
                new URL(s.src).pathname
              )
            );
            assert(named.length > 0, "the page names its scripts");
            assertEqual(named.filter((src) => !held.has(src)), [], "scripts not held");
          }, { timeoutMs: STEP_GUARD_MS, what: "every script of the page to be asked for and held" }),
        letGo: async () => {
          holding = false;
          release();
          await page.unroute(isScript, handler);
        },
      };
    };
    const newDevice = async (label) => {
      const context = await browser.newContext({
        viewport,
        baseURL: webUrl,
        locale: "en-GB",
        timezoneId: "UTC",
      });
      context.setDefaultTimeout(15_000);
      const page = await context.newPage();
      const device = { label, context, page, errors: [], deviceId: null, navigations: 0 };
      page.on("pageerror", (error) => device.errors.push(String(error)));
      page.on("framenavigated", (frame) => {
        if (frame === page.mainFrame()) device.navigations++;
      });
      return device;
    };
    /** A context of its own (cookies, storage) for a test's throwaway readers. */
    const ownContext = () =>
      browser.newContext({ baseURL: webUrl, viewport, locale: "en-GB", timezoneId: "UTC" });
    /** A tab in `context` whose page errors are collected. */
    const tabIn = async (context, label) => {
      const page = await context.newPage();
      const device = { label, context, page, errors: [], navigations: 0 };
      page.on("pageerror", (error) => device.errors.push(String(error)));
      return device;
    };
    const phone = await newDevice("reader A, device 1");
    const tablet = await newDevice("reader A, device 2");
    const other = await newDevice("reader B");
    const devices = [phone, tablet, other];

    const shot = async (device, name) => {
      const file = path.join(ARTIFACTS, `${name}.png`);
      await device.page.screenshot({ path: file, fullPage: true });
      return file;
    };

    const signIn = async (device, email) => {
      const { page } = device;
      await page.goto("/sign-in");
      if (devMode) {
        const form = page.getByTestId("dev-sign-in");
        await form.locator('input[name="email"]').fill(email);
        await form.getByRole("button", { name: /sign in/i }).click();
      } else {
        const form = page.getByTestId("password-sign-in");
        await form.locator('input[name="email"]').fill(email);
        await form.locator('input[name="password"]').fill(passwords.get(email));
        await form.getByRole("button", { name: /sign in/i }).click();
      }
      await arrivedAt(page, "/");
      await page.getByTestId("connection-status").waitFor({ timeout: STEP_GUARD_MS });
      await hydrated(page);
      device.deviceId = (await page.getByTestId("device-id").textContent())?.trim();
    };

    /**
     * A throwaway reader's tab in a context of its own, signed in (against a real project the user is
     * created first). The caller closes `context`.
     */
    const throwawayReader = async (label, email) => {
      const context = await ownContext();
      const device = await tabIn(context, label);
      if (!devMode) passwords.set(email, await createAuthUser(supabaseUrl, serviceRoleKey, email));
      await signIn(device, email);
      return { context, device };
    };

    /**
     * Signs this browser out in `second` and waits for `first`, a tab of the same browser, to leave
     * for the sign-in page: step by step, each on its own signal with its own hang guard. The sign-in
     * page `second` is sent to says so to the other tabs once its script runs (SignedOutSignal, a
     * `storage` event in them); `first` then asks /auth/token, is answered 401 and leaves.
     */
    const signOutInOtherTab = async (first, second) => {
      await hydrated(second.page);
      await second.page.getByRole("button", { name: "Sign out" }).click({ timeout: STEP_GUARD_MS });
      await arrivedAt(second.page, "/sign-in");
      await eventually(async () => {
        const said = await second.page.evaluate((key) => localStorage.getItem(key), "readsync.session");
        assert(said !== null && JSON.parse(said).userId === null, `the signal says ${said}`);
      }, { timeoutMs: STEP_GUARD_MS, what: `${second.label}'s sign-in page to tell the other tabs` });
      await arrivedAt(first.page, "/sign-in");
    };

    const status = (device) => device.page.getByTestId("connection-status").getAttribute("data-status");
    const waitForStatus = (device, want, timeoutMs = 20_000) =>
      eventually(async () => assertEqual(await status(device), want, `${device.label} status`), {
        timeoutMs,
        what: `${device.label} to be ${want}`,
      });

    const openSeries = async (device, seriesId) => {
      await device.page.goto(`/series/${seriesId}`);
      // Scoped to <main>: while the streamed page replaces loading.tsx, React briefly holds a hidden
      // second copy of the content outside it.
      await device.page.locator("main").getByTestId("position-form").waitFor();
    };

    // Scoped to <main> like openSeries: a hidden second copy of the content may briefly exist
    // outside it while a streamed page replaces its loading state.
    const positionOf = async (device) => {
      const el = device.page.locator("main").getByTestId("current-position");
      return {
        chapter: Number(await el.getAttribute("data-chapter")),
        page: Number(await el.getAttribute("data-page")),
        percentage: Number(await el.getAttribute("data-percentage")),
      };
    };
    const waitForPosition = (device, want, timeoutMs = 15_000) =>
      eventually(async () => assertEqual(await positionOf(device), want, `${device.label} position`), {
        timeoutMs,
        what: `${device.label} to show ${JSON.stringify(want)}`,
      });

    const setPosition = async (device, { chapter, page, percent }) => {
      const form = device.page.locator("main").getByTestId("position-form");
      await form.locator('input[name="chapter"]').fill(String(chapter));
      await form.locator('input[name="page"]').fill(String(page));
      await form.locator('input[name="percentage"]').fill(String(percent));
      await form.getByTestId("save-position").click();
    };

    const waitForOutboxEmpty = (device) =>
      eventually(
        async () => assertEqual(await device.page.getByTestId("pending-count").count(), 0, "outbox empty"),
        {
          what: `${device.label}'s outbox to be sent`,
        },
      );

    const mark = async (device) => {
      const marker = `m-${Math.random()}`;
      await device.page.evaluate((m) => {
        globalThis.__readsyncMarker = m;
      }, marker);
      return { marker, navigations: device.navigations };
    };
    const assertNoReload = async (device, before) => {
      const marker = await device.page.evaluate(() => globalThis.__readsyncMarker);
      assertEqual(marker, before.marker, `${device.label} kept its page (no reload)`);
      assertEqual(device.navigations, before.navigations, `${device.label} navigations`);
    };

    const storedRow = async (seriesId, email) => {
      if (!sql) return null;
      const rows = await sql`
        select p.chapter, p.page, p.percentage, p.device_id from public.reading_progress p
        join auth.users u on u.id = p.user_id where u.email = ${email} and p.series_id = ${seriesId}`;
      return rows[0] ? { ...rows[0], percentage: Number(rows[0].percentage) } : null;
    };

    /** A write through the progress function with the device's own session (its /auth/token). */
    const writeThroughApi = async (device, write) => {
      const tokenResponse = await device.context.request.get("/auth/token");
      assertEqual(tokenResponse.status(), 200, `${device.label} /auth/token`);
      const { accessToken } = await tokenResponse.json();
      const response = await fetch(`${supabaseUrl}/functions/v1/progress`, {
        method: "POST",
        headers: {
          apikey: anonKey,
          Authorization: `Bearer ${accessToken}`,
          "Content-Type": "application/json",
        },
        body: JSON.stringify(write),
      });
      const body = await response.json();
      assertEqual(response.status, 200, `POST /progress: ${JSON.stringify(body)}`);
      return body;
    };

    const seriesLive = `saga-${run}`;
    const seriesOffline = `atlas-${run}`;

    // ---------------------------------------------------------------- the tests
    const tests = [
      {
        name: TESTS[0],
        fn: async () => {
          await signIn(phone, emailA);
          await signIn(tablet, emailA);
          await signIn(other, emailB);
          assert(phone.deviceId !== tablet.deviceId, `two contexts have two device ids (${phone.deviceId})`);
          // Server-rendered: the library (empty for new readers) is in the HTML, before any script,
          // streamed after the loading.tsx fallback.
          const html = await (await tablet.context.request.get("/")).text();
          assert(html.includes('data-testid="library-empty"'), "library rendered on the server");
          assert(
            html.indexOf('data-testid="loading"') >= 0 &&
              html.indexOf('data-testid="loading"') < html.indexOf('data-testid="library-empty"'),
            "the loading state is sent first",
          );
          for (const d of devices) await waitForStatus(d, "live");
          await shot(phone, "01-signed-in-library");
        },
      },
      {
        name: TESTS[1],
        fn: async () => {
          await openSeries(phone, seriesLive);
          assertEqual(
            await positionOf(phone),
            { chapter: 0, page: 0, percentage: 0 },
            "a new series starts at 0",
          );
          await tablet.page.goto("/");
          await other.page.goto("/");
          for (const d of devices) await waitForStatus(d, "live");
          const tabletBefore = await mark(tablet);
          const otherBefore = await mark(other);

          await setPosition(phone, { chapter: 3, page: 14, percent: 25 });
          // Optimistic: the writing device shows it at once.
          await waitForPosition(phone, { chapter: 3, page: 14, percentage: 0.25 });
          // Live on the other device of the same reader, without a reload.
          const item = tablet.page.locator("main").getByTestId(`library-item-${seriesLive}`);
          await eventually(async () => {
            assertEqual(
              (await item.getByTestId("library-position").textContent())?.trim(),
              "Chapter 3 · Page 14 · 25%",
              "library row",
            );
          }, { what: "the tablet's library to show the phone's change" });
          await assertNoReload(tablet, tabletBefore);

          // Both on the series page: the next step arrives live too.
          await openSeries(tablet, seriesLive);
          await waitForPosition(tablet, { chapter: 3, page: 14, percentage: 0.25 });
          await waitForStatus(tablet, "live");
          const tabletOnSeries = await mark(tablet);
          await phone.page.locator("main").getByTestId("next-page").click();
          await waitForPosition(tablet, { chapter: 3, page: 15, percentage: 0.25 });
          await assertNoReload(tablet, tabletOnSeries);
          const source = await tablet.page.locator("main").getByTestId("current-source").getAttribute(
            "data-device",
          );
          assertEqual(source, phone.deviceId, "the tablet shows which device wrote it");
          if (sql) {
            assertEqual(
              await storedRow(seriesLive, emailA),
              { chapter: 3, page: 15, percentage: 0.25, device_id: phone.deviceId },
              "stored row",
            );
          }

          // The other reader never sees it. Proof without waiting a fixed time: reader B's own
          // later change (written through the progress function, as from a third device of B's)
          // reaches B's page live, so B's channel delivers, and reader A's earlier change is
          // still not there.
          const seriesOfB = `b-only-${run}`;
          await writeThroughApi(other, {
            series_id: seriesOfB,
            chapter: 2,
            page: 9,
            percentage: 0.1,
            device_id: "reader-b-e-reader",
            updated_at: new Date().toISOString(),
          });
          await eventually(async () => {
            assertEqual(
              (await other.page.locator("main").getByTestId(`library-item-${seriesOfB}`).getByTestId(
                "library-position",
              )
                .textContent())?.trim(),
              "Chapter 2 · Page 9 · 10%",
              "reader B's own change",
            );
          }, { what: "reader B's own change to arrive live" });
          assertEqual(
            await other.page.locator("main").getByTestId(`library-item-${seriesLive}`).count(),
            0,
            "A's series on B's page",
          );
          await assertNoReload(other, otherBefore);
          await other.page.reload();
          await other.page.locator("main").getByTestId(`library-item-${seriesOfB}`).waitFor();
          assertEqual(
            await other.page.locator("main").getByTestId(`library-item-${seriesLive}`).count(),
            0,
            "after a reload",
          );
          await openSeries(other, seriesLive);
          assertEqual(
            await positionOf(other),
            { chapter: 0, page: 0, percentage: 0 },
            "reader B's view of the series",
          );

          await shot(phone, "02-phone-after-write");
          await shot(tablet, "02-tablet-live-update");
          await shot(other, "02-other-reader-sees-nothing");
          await saveTwoDevicesPicture(browser, phone, tablet, updateDocs);
        },
      },
      {
        name: TESTS[2],
        fn: async () => {
          await openSeries(phone, seriesOffline);
          await openSeries(tablet, seriesOffline);
          await waitForStatus(phone, "live");
          await waitForStatus(tablet, "live");
          await setPosition(phone, { chapter: 1, page: 1, percent: 1 });
          await waitForPosition(tablet, { chapter: 1, page: 1, percentage: 0.01 });

          await tablet.context.setOffline(true);
          await waitForStatus(tablet, "offline");
          // Offline, the tablet keeps working: the edit shows at once and waits in the outbox.
          await setPosition(tablet, { chapter: 5, page: 1, percent: 40 });
          await waitForPosition(tablet, { chapter: 5, page: 1, percentage: 0.4 });
          await tablet.page.getByTestId("pending-count").waitFor();
          assert(
            /Not sent yet \(offline\)/.test(
              await tablet.page.locator("main").getByTestId("current-source").textContent() ?? "",
            ),
            "the tablet says its edit waits on the device",
          );
          await shot(tablet, "03-tablet-offline-edit");
          // Last-write-wins orders by the devices' clocks (ms): keep the two writes apart.
          await new Promise((r) => setTimeout(r, 50));
          // Meanwhile the phone, online, reads further: a newer write.
          await setPosition(phone, { chapter: 6, page: 2, percent: 45 });
          await waitForPosition(phone, { chapter: 6, page: 2, percentage: 0.45 });
          // The phone's write is acknowledged (stored) before the tablet comes back.
          await waitForOutboxEmpty(phone);

          await tablet.context.setOffline(false);
          // The tablet's older edit is flushed, loses, and the tablet says so and shows the winner.
          const notice = tablet.page.locator("main").getByTestId("conflict-notice");
          await notice.waitFor({ timeout: 20_000 });
          assertEqual(
            await notice.getAttribute("data-winner-device"),
            phone.deviceId,
            "winner named in the notice",
          );
          await waitForPosition(tablet, { chapter: 6, page: 2, percentage: 0.45 });
          await waitForOutboxEmpty(tablet);
          await waitForStatus(tablet, "live", 30_000);
          assertEqual(
            await positionOf(phone),
            { chapter: 6, page: 2, percentage: 0.45 },
            "phone keeps the winner",
          );
          if (sql) {
            assertEqual(
              await storedRow(seriesOffline, emailA),
              { chapter: 6, page: 2, percentage: 0.45, device_id: phone.deviceId },
              "stored row",
            );
          }
          await shot(tablet, "03-tablet-reconnected-lost");
          await shot(phone, "03-phone-kept-newer");
        },
      },
      {
        name: TESTS[3],
        fn: async () => {
          await openSeries(phone, seriesOffline);
          await openSeries(tablet, seriesOffline);
          await waitForStatus(phone, "live");
          await waitForStatus(tablet, "live");
          await tablet.context.setOffline(true);
          await waitForStatus(tablet, "offline");
          await setPosition(phone, { chapter: 7, page: 1, percent: 50 });
          await waitForPosition(phone, { chapter: 7, page: 1, percentage: 0.5 });
          // Last-write-wins orders by the devices' clocks (ms): keep the two writes apart.
          await new Promise((r) => setTimeout(r, 50));
          // Later, the offline tablet reads on: its edit is the newest one.
          await setPosition(tablet, { chapter: 8, page: 3, percent: 55 });
          await waitForPosition(tablet, { chapter: 8, page: 3, percentage: 0.55 });
          const phoneBefore = await mark(phone);
          await waitForOutboxEmpty(phone);
          await tablet.context.setOffline(false);
          await waitForPosition(phone, { chapter: 8, page: 3, percentage: 0.55 }, 20_000);
          await assertNoReload(phone, phoneBefore);
          await waitForOutboxEmpty(tablet);
          assertEqual(
            await tablet.page.locator("main").getByTestId("conflict-notice").count(),
            0,
            "no conflict notice for the winner",
          );
          assertEqual(
            await positionOf(tablet),
            { chapter: 8, page: 3, percentage: 0.55 },
            "tablet keeps its write",
          );
          if (sql) {
            assertEqual(
              await storedRow(seriesOffline, emailA),
              { chapter: 8, page: 3, percentage: 0.55, device_id: tablet.deviceId },
              "stored row",
            );
          }
          await shot(phone, "04-phone-received-offline-edit");
        },
      },
      {
        name: TESTS[4],
        fn: async () => {
          const page = await (await browser.newContext({ baseURL: webUrl })).newPage();
          try {
            await page.goto("/sign-in");
            if (devMode) {
              const text = await page.getByTestId("dev-sign-in").textContent();
              assert(/DEVELOPMENT ONLY/.test(text ?? ""), "development sign-in is labelled");
            } else {
              assertEqual(
                await page.getByTestId("dev-sign-in").count(),
                0,
                "no development sign-in against a real project",
              );
            }
            // A second server without READSYNC_DEV_SIGNIN must not offer or honour it.
            if (devMode && !env("READSYNC_WEB_URL")) {
              const plain = await startRunWebApp({
                apiUrl: supabaseUrl,
                anonKey,
                jwtSecret,
                dbUrl,
                devSignIn: false,
                build: "never",
                log,
              });
              try {
                await page.goto(`${plain.url}/sign-in`);
                assertEqual(
                  await page.getByTestId("dev-sign-in").count(),
                  0,
                  "dev sign-in hidden when disabled",
                );
                await page.getByTestId("password-sign-in").waitFor();
                // The dev session cookie of the first server is not accepted by this one.
                const token = (await phone.context.cookies()).find((c) => c.name === "readsync-dev-session");
                assert(token, "phone has a development session cookie");
                const response = await page.request.get(`${plain.url}/auth/token`, {
                  headers: { cookie: `readsync-dev-session=${token.value}` },
                });
                assertEqual(response.status(), 401, "a development token is refused when dev sign-in is off");
              } finally {
                await plain.stop();
              }
            }
          } finally {
            await page.context().close();
          }
        },
      },
      {
        name: TESTS[5],
        fn: async () => {
          if (!devMode || env("READSYNC_WEB_URL")) {
            throw new SkipTest(`needs the local stack and a server of its own (app at ${webUrl})`);
          }
          // A server whose progress function is behind a gate that drops every connection while it is
          // down: sign-in still works (it only needs the local database), the library page must fail
          // into error.tsx, and its Try again must fetch the page again once the function answers
          // (Next's reset() alone re-renders the failed answer it already has).
          const gate = await startGate(supabaseUrl);
          gate.down = true;
          const broken = await startRunWebApp({
            apiUrl: gate.url,
            anonKey,
            jwtSecret,
            dbUrl,
            build: "never",
            log,
          });
          const context = await browser.newContext({ baseURL: broken.url, viewport });
          try {
            const page = await context.newPage();
            await page.goto("/sign-in");
            const form = page.getByTestId("dev-sign-in");
            await form.locator('input[name="email"]').fill(emailA);
            await form.getByRole("button", { name: /sign in/i }).click();
            const error = page.locator("main").getByTestId("load-error");
            await error.waitFor();
            assert(
              /Could not load your reading progress/.test(await error.textContent() ?? ""),
              "error text",
            );
            assertEqual(
              await page.locator("main").getByTestId("library").count(),
              0,
              "no library without the function",
            );
            assert(
              (await page.getByTestId("connection-status").getAttribute("data-status")) !== "live",
              "not live without the API",
            );
            await page.screenshot({ path: path.join(ARTIFACTS, "05-error-state.png"), fullPage: true });
            gate.down = false;
            await error.getByRole("button", { name: "Try again" }).click();
            await page.locator("main").getByTestId("library").waitFor();
            gate.down = true;
            await page.goto(`/series/retry-${run}`);
            const seriesError = page.locator("main").getByTestId("load-error");
            await seriesError.waitFor();
            assert(
              /Could not load your position/.test(await seriesError.textContent() ?? ""),
              "series error text",
            );
            gate.down = false;
            await seriesError.getByRole("button", { name: "Try again" }).click();
            await page.locator("main").getByTestId("position-form").waitFor();
          } finally {
            await context.close();
            await broken.stop();
            await gate.close();
          }
        },
      },
      {
        name: TESTS[6],
        fn: async () => {
          // A third device of reader A whose WebSocket to Realtime is refused (the HTTP API works).
          const context = await ownContext();
          context.setDefaultTimeout(15_000);
          let refused = 0;
          await context.routeWebSocket(/\/realtime\/v1\/websocket/, (ws) => {
            refused++;
            ws.close({ code: 1011, reason: "realtime unreachable (test)" });
          });
          const page = await context.newPage();
          const eReader = {
            label: "reader A, device 3 (no Realtime)",
            context,
            page,
            errors: [],
            navigations: 0,
          };
          page.on("pageerror", (error) => eReader.errors.push(String(error)));
          page.on("framenavigated", (frame) => {
            if (frame === page.mainFrame()) eReader.navigations++;
          });
          try {
            await signIn(eReader, emailA);
            await openSeries(eReader, seriesLive);
            await waitForStatus(eReader, "polling");
            assert(refused > 0, "the app tried Realtime");
            const before = await mark(eReader);
            await openSeries(phone, seriesLive);
            await setPosition(phone, { chapter: 9, page: 4, percent: 60 });
            // Polling every few seconds: the change arrives by the changes endpoint.
            await waitForPosition(eReader, { chapter: 9, page: 4, percentage: 0.6 }, 30_000);
            await assertNoReload(eReader, before);
            assertEqual(await status(eReader), "polling", "still polling");
            await page.screenshot({ path: path.join(ARTIFACTS, "06-polling-device.png"), fullPage: true });
            assertEqual(eReader.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[7],
        fn: async () => {
          // Without a session cookie the server answers with a redirect before rendering anything.
          for (const route of ["/", `/series/${seriesLive}`]) {
            const response = await fetch(`${webUrl}${route}`, { redirect: "manual" });
            await response.arrayBuffer();
            assert([303, 307, 308].includes(response.status), `${route}: redirect, got ${response.status}`);
            assertEqual(
              new URL(response.headers.get("location"), webUrl).pathname,
              "/sign-in",
              `${route} goes to`,
            );
          }
          const anonymousToken = await fetch(`${webUrl}/auth/token`);
          assertEqual(anonymousToken.status, 401, "/auth/token without a session");
          if (!devMode) throw new SkipTest("signing a throwaway user in and out needs the local stack");
          const context = await browser.newContext({ baseURL: webUrl, viewport });
          try {
            const page = await context.newPage();
            const device = { label: "reader C", context, page, errors: [], navigations: 0 };
            await signIn(device, `reader-c-${run}@readsync.test`);
            assertEqual((await context.request.get("/auth/token")).status(), 200, "/auth/token signed in");
            await page.getByRole("button", { name: "Sign out" }).click({ timeout: STEP_GUARD_MS });
            await arrivedAt(page, "/sign-in");
            assertEqual(
              (await context.request.get("/auth/token")).status(),
              401,
              "/auth/token after sign-out",
            );
            await page.goto("/");
            assertEqual(new URL(page.url()).pathname, "/sign-in", "the library after sign-out");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[8],
        fn: async () => {
          // Relative Location headers: the host Next.js sees (its own address behind a proxy) is
          // not the one the browser used, so an absolute redirect built from it leaves the site.
          const landing = await fetch(`${webUrl}/auth/callback`, { redirect: "manual" });
          await landing.arrayBuffer();
          assertEqual(
            landing.headers.get("location"),
            "/sign-in?error=link",
            "/auth/callback without a code",
          );
          const failedLink = await fetch(`${webUrl}/sign-in?error=link`);
          assert(
            (await failedLink.text()).includes("sign-in link is invalid or has expired"),
            "the failed link is explained",
          );
          if (!devMode) throw new SkipTest("signing a throwaway user in and out needs the local stack");
          const context = await browser.newContext({ baseURL: webUrl, viewport });
          try {
            const page = await context.newPage();
            const device = { label: "reader D", context, page, errors: [], navigations: 0 };
            await signIn(device, `reader-d-${run}@readsync.test`);
            // A form on another site posting to /sign-out (the cookie goes along: SameSite=Lax
            // still sends it on some top-level navigations) is refused and signs nobody out.
            const forged = await context.request.post("/sign-out", {
              headers: { origin: "http://evil.example", "sec-fetch-site": "cross-site" },
              maxRedirects: 0,
            });
            assertEqual(forged.status(), 403, "cross-site sign-out");
            assertEqual((await context.request.get("/auth/token")).status(), 200, "still signed in");
            const own = await context.request.post("/sign-out", {
              headers: { origin: new URL(webUrl).origin, "sec-fetch-site": "same-origin" },
              maxRedirects: 0,
            });
            assertEqual(own.status(), 303, "sign-out from the site itself");
            assertEqual(
              own.headers()["location"],
              "/sign-in",
              "sign-out goes to the site's own sign-in page",
            );
            assertEqual((await context.request.get("/auth/token")).status(), 401, "signed out");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[9],
        fn: async () => {
          // The same build in Supabase mode against tests/browser/fakeAuth.mjs (password sign-in, the
          // user check, sign-out), which passes the progress function through to the local stack.
          if (!devMode) throw new SkipTest("a real project runs Supabase mode in the tests above");
          const { startFakeAuth } = await import("./fakeAuth.mjs");
          const user = { id: crypto.randomUUID(), email: `sb-${run}@readsync.test`, password: `pw-${run}` };
          const auth = await startFakeAuth({ jwtSecret, stackUrl: supabaseUrl, user });
          // The built app in Supabase mode, its Auth server the stand-in (extra environment: `env`).
          const startSupabaseModeApp = (env = {}) =>
            startRunWebApp({
              apiUrl: auth.url,
              anonKey,
              devSignIn: false,
              build: "never",
              log: () => {},
              env,
            });
          let app = null;
          const context = await browser.newContext({ viewport });
          try {
            app = await startSupabaseModeApp();
            const page = await context.newPage();
            await page.goto(`${app.url}/sign-in`);
            const form = page.getByTestId("password-sign-in");
            await form.locator('input[name="email"]').fill(user.email);
            await form.locator('input[name="password"]').fill(user.password);
            await form.getByRole("button", { name: /sign in/i }).click();
            await arrivedAt(page, "/");
            const sessionCookies = (await context.cookies()).filter((c) => c.name.startsWith("sb-"));
            assert(sessionCookies.length > 0, "a Supabase session cookie is set");
            for (const c of sessionCookies) assertEqual(c.httpOnly, true, `${c.name} is httpOnly`);
            assertEqual(
              (await context.request.get(`${app.url}/auth/token`)).status(),
              200,
              "/auth/token signed in",
            );
            auth.state.outage = true;
            assertEqual(
              (await context.request.get(`${app.url}/auth/token`)).status(),
              503,
              "/auth/token during an Auth outage",
            );
            // A page loaded meanwhile shows the app's own error state (not Next's generic 500 page), and
            // its Try again works before the page's script has run (a slow device): the library comes,
            // from the server, while the scripts are still held.
            const outageScripts = await holdScripts(page);
            await page.goto(`${app.url}/`, { waitUntil: "commit" });
            const outageError = page.locator("main").getByTestId("load-error");
            await outageError.waitFor();
            await outageScripts.allHeld();
            assert(/sign-in service/.test(await outageError.textContent() ?? ""), "the outage is named");
            auth.state.outage = false;
            await outageError.getByRole("link", { name: "Try again" }).click();
            await page.locator("main").getByTestId("open-series").waitFor();
            await outageScripts.letGo();
            assertEqual(
              (await context.request.get(`${app.url}/auth/token`)).status(),
              200,
              "still signed in after it",
            );
            await hydrated(page);
            await page.getByRole("button", { name: "Sign out" }).click({ timeout: STEP_GUARD_MS });
            await arrivedAt(page, "/sign-in");
            assertEqual(new URL(page.url()).origin, app.url, "sign-out stays on the app's origin");
            assertEqual(auth.state.logoutScopes, ["local"], "sign-out ends this browser's session only");

            // Magic links: the link in the email leads to READSYNC_SITE_URL, never to a host taken
            // from the request (a forged host header would send the reader's sign-in code there).
            await app.stop();
            app = await startSupabaseModeApp({ READSYNC_SITE_URL: "https://reader.example" });
            // Served at http://127.0.0.1:<port>, configured as https://reader.example: the link must
            // name the configured site, not the host the request came to. (A forged X-Forwarded-Host
            // cannot be tried here: Next.js refuses a server action whose Origin does not match it.)
            const forged = await browser.newContext({ viewport });
            try {
              const linkPage = await forged.newPage();
              await linkPage.goto(`${app.url}/sign-in`);
              const linkForm = linkPage.getByTestId("magic-link-sign-in");
              await linkForm.locator('input[name="email"]').fill(user.email);
              await linkForm.getByRole("button", { name: /email me a link/i }).click();
              await linkPage.getByText(`Check ${user.email} for a sign-in link.`).waitFor({
                timeout: 20_000,
              });
              assertEqual(auth.state.magicLinks.length, 1, "one link requested");
              const { email, redirectTo } = auth.state.magicLinks[0];
              assertEqual(email, user.email, "for the reader's email");
              assert(
                String(redirectTo).startsWith("https://reader.example/auth/callback"),
                `the link leads to the site's own callback, got ${redirectTo}`,
              );
            } finally {
              await forged.close();
            }
          } finally {
            await context.close();
            if (app) await app.stop();
            await auth.close();
          }
        },
      },
      {
        name: TESTS[10],
        fn: async () => {
          // Clickjacking: another site must not show the reader's pages (their buttons) in a frame.
          for (const route of ["/sign-in", "/", "/no-such-page"]) {
            const response = await fetch(`${webUrl}${route}`, { redirect: "manual" });
            await response.arrayBuffer();
            assertEqual(response.headers.get("x-frame-options"), "DENY", `${route}: X-Frame-Options`);
            assertEqual(
              response.headers.get("content-security-policy"),
              "frame-ancestors 'none'",
              `${route}: Content-Security-Policy`,
            );
            assertEqual(response.headers.get("x-content-type-options"), "nosniff", `${route}: nosniff`);
            assertEqual(response.headers.get("referrer-policy"), "same-origin", `${route}: Referrer-Policy`);
          }
          // Not valid percent-encoded UTF-8 (Next.js itself answered a plain 500 for a series id).
          for (const route of ["/series/%FF", "/series/a%E0%A4%A", "/%FF"]) {
            const response = await fetch(`${webUrl}${route}`, { redirect: "manual" });
            const text = await response.text();
            assertEqual(response.status, 400, `${route}: status`);
            assert(text.includes("not valid percent-encoded UTF-8"), `${route}: says why`);
            // next.config.mjs's headers reach the proxy's own answers too.
            assertEqual(response.headers.get("x-content-type-options"), "nosniff", `${route}: nosniff`);
            assertEqual(response.headers.get("x-frame-options"), "DENY", `${route}: X-Frame-Options`);
          }
        },
      },
      {
        name: TESTS[11],
        // Three steps across two tabs, each guarded by STEP_GUARD_MS, after a sign-in.
        timeoutMs: 240_000,
        fn: async () => {
          if (!devMode) throw new SkipTest("signing throwaway users in and out needs the local stack");
          const context = await ownContext();
          try {
            const tab = (label) => tabIn(context, label);
            const emailD = `reader-d-${run}@readsync.test`;
            const emailE = `reader-e-${run}@readsync.test`;
            const shared = `shared-${run}`;
            const first = await tab("reader D, tab 1");
            await signIn(first, emailD);
            await openSeries(first, shared);
            await setPosition(first, { chapter: 3, page: 30, percent: 3 });
            await waitForOutboxEmpty(first);
            // Tab 2 of the same browser: sign out, sign in as E, who reads the same series further.
            const second = await tab("reader E, tab 2");
            await second.page.goto("/");
            // Tab 1 hears of the sign-out (lib/client/sessionSignal.ts) and leaves D's page.
            await signOutInOtherTab(first, second);
            await signIn(second, emailE);
            await openSeries(second, shared);
            await setPosition(second, { chapter: 50, page: 500, percent: 50 });
            await waitForOutboxEmpty(second);
            // Tab 1 opened again renders E's pages (E's cookie), never D's store with E's token.
            await first.page.goto("/");
            await eventually(async () => {
              const who = (await first.page.getByTestId("signed-in-as").textContent()) ?? "";
              assert(who.includes(emailE), `tab 1 shows ${who}`);
            }, { what: "tab 1 to show reader E" });
            assertEqual(await storedRow(shared, emailD), {
              chapter: 3,
              page: 30,
              percentage: 0.03,
              device_id: first.deviceId,
            }, "D's stored progress");
            assertEqual([...first.errors, ...second.errors], [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[12],
        fn: async () => {
          if (!devMode) throw new SkipTest("signing a throwaway user in needs the local stack");
          const context = await ownContext();
          try {
            const device = await tabIn(context, "reader F");
            const { page } = device;
            const email = `reader-f-${run}@readsync.test`;
            const series = `refused-${run}`;
            await signIn(device, email);
            await openSeries(device, series);
            const alert = page.getByTestId("sync-error");
            const writes = "**/functions/v1/progress**";
            // A proxy in the way answers 400 with a page of its own: the API never saw the write.
            await page.route(
              writes,
              (route) =>
                route.request().method() === "POST"
                  ? route.fulfill({
                    status: 400,
                    contentType: "text/html",
                    body: "<html>400 Bad Request</html>",
                  })
                  : route.continue(),
            );
            await setPosition(device, { chapter: 2, page: 20, percent: 2 });
            await eventually(
              async () => assert(/Not saved yet \(will retry\)/.test(await alert.textContent()), "says so"),
              {
                what: "the not-saved-yet message",
              },
            );
            assertEqual(
              await page.getByTestId("pending-count").getAttribute("data-count"),
              "1",
              "kept queued",
            );
            await page.unroute(writes);
            await waitForOutboxEmpty(device);
            assertEqual((await storedRow(series, email))?.page, 20, "sent once the proxy let it through");
            await eventually(async () => assertEqual(await alert.count(), 0, "message gone"), {
              what: "the message to go",
            });
            // The API itself refuses a write: it will never apply, so it is dropped, and the reader is told.
            await page.route(writes, (route) =>
              route.request().method() === "POST"
                ? route.fulfill({
                  status: 422,
                  contentType: "application/json",
                  body: JSON.stringify({
                    error: { code: "validation_failed", message: "page is out of range" },
                  }),
                })
                : route.continue());
            await setPosition(device, { chapter: 4, page: 40, percent: 4 });
            await eventually(
              async () => assert(/Could not save/.test(await alert.textContent()), "says so"),
              {
                what: "the could-not-save message",
              },
            );
            await waitForOutboxEmpty(device);
            await page.unroute(writes);
            await alert.getByRole("button", { name: "Dismiss" }).click();
            assertEqual(await alert.count(), 0, "dismissed");
            assertEqual((await storedRow(series, email))?.page, 20, "the refused write never landed");
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[13],
        fn: async () => {
          if (!devMode) throw new SkipTest("signing a throwaway user in needs the local stack");
          const context = await ownContext();
          try {
            // What Chrome does when site data is blocked: reading window.localStorage throws.
            await context.addInitScript(() =>
              Object.defineProperty(window, "localStorage", {
                get() {
                  throw new DOMException("Access is denied for this document.", "SecurityError");
                },
              })
            );
            const device = await tabIn(context, "reader G");
            const email = `reader-g-${run}@readsync.test`;
            const series = `no-storage-${run}`;
            await signIn(device, email);
            await openSeries(device, series);
            await setPosition(device, { chapter: 6, page: 60, percent: 6 });
            await waitForOutboxEmpty(device);
            assertEqual((await storedRow(series, email))?.page, 60, "saved");
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[14],
        fn: async () => {
          // A third device of reader A whose socket stays open but hears nothing (a laptop that slept,
          // a phone's browser in the background): Realtime thinks it is connected, and so does the
          // tab, whose next safety read is a minute away. Shown again, the tab reads at once.
          // Heartbeats are still answered here (by the route): a late reply would make the tab read
          // by itself (RealtimeService's heartbeat watch), and this test is about the tab being shown.
          const context = await ownContext();
          let silent = false;
          let droppedBroadcasts = 0;
          await context.routeWebSocket(/\/realtime\/v1\/websocket/, (ws) => {
            const server = ws.connectToServer();
            ws.onMessage((message) => {
              const heartbeatRef = silent ? heartbeatRefOf(message) : null;
              if (heartbeatRef !== null) {
                ws.send(
                  JSON.stringify([null, heartbeatRef, "phoenix", "phx_reply", {
                    status: "ok",
                    response: {},
                  }]),
                );
              } else server.send(message);
            });
            server.onMessage((message) => {
              if (!silent) ws.send(message);
              else if (isBroadcastFrame(message)) droppedBroadcasts++;
            });
          });
          // The laptop's reads of the progress function (GETs; writes are POSTs): with its socket
          // silent, the only way the phone's write could reach it before it is shown again.
          let reads = 0;
          let readsUnderWay = 0;
          const isRead = (request) =>
            request.method() === "GET" && /\/functions\/v1\/progress/.test(request.url());
          context.on("request", (request) => {
            if (isRead(request)) (reads++, readsUnderWay++);
          });
          const readDone = (request) => {
            if (isRead(request)) readsUnderWay--;
          };
          context.on("requestfinished", readDone);
          context.on("requestfailed", readDone);
          const laptop = await tabIn(context, "reader A, device 4 (socket goes silent)");
          try {
            // Before the laptop goes live: its safety read is then a minute after the steps below.
            await openSeries(phone, seriesLive);
            await signIn(laptop, emailA);
            await openSeries(laptop, seriesLive);
            await waitForStatus(laptop, "live");
            const before = await positionOf(laptop);
            silent = true;
            // A read answered after the phone's write could bring it: the laptop's catch-up is done first.
            await eventually(() => assertEqual(readsUnderWay, 0, "the laptop's reads under way"), {
              what: "the laptop's reads to be answered",
            });
            const readsBeforeWrite = reads;
            const next = { chapter: 12, page: 30, percentage: 0.7 };
            assert(
              JSON.stringify(before) !== JSON.stringify(next),
              "the phone writes a position the laptop does not show",
            );
            await setPosition(phone, { chapter: 12, page: 30, percent: 70 });
            await waitForOutboxEmpty(phone);
            // The write's broadcast came to the laptop's socket and was dropped there, and the laptop
            // read nothing since: nothing can have brought the phone's position to it.
            await eventually(() => assert(droppedBroadcasts > 0, "the broadcast reached the silent socket"), {
              what: "the broadcast to be dropped",
            });
            assertEqual(reads, readsBeforeWrite, "the laptop read the changes while its socket was silent");
            assertEqual(
              await positionOf(laptop),
              before,
              "nothing reached the laptop while its socket was silent",
            );
            assertEqual(await status(laptop), "live", "the laptop still thinks it is live");
            // The reader comes back to the tab.
            const visibility = await laptop.page.evaluate(() => {
              document.dispatchEvent(new Event("visibilitychange"));
              return document.visibilityState;
            });
            assertEqual(visibility, "visible", "the tab is visible");
            await waitForPosition(laptop, next, 10_000);
            assertEqual(laptop.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[16],
        fn: async () => {
          const email = `reader-r-${run}@readsync.test`;
          const { context, device } = await throwawayReader("reader R", email);
          try {
            const series = `cleared-field-${run}`;
            await openSeries(device, series);
            await setPosition(device, { chapter: 12, page: 30, percent: 40 });
            await waitForOutboxEmpty(device);
            const form = device.page.locator("main").getByTestId("position-form");
            for (const field of ["chapter", "page", "percentage"]) {
              await form.locator(`input[name="${field}"]`).fill("");
              await form.getByTestId("save-position").click();
              assertEqual(
                await form.locator("input:invalid").count(),
                1,
                `the empty ${field} field is marked invalid`,
              );
              // A save would show at once (optimistic) and go out within a second.
              await device.page.waitForTimeout(1_000);
              assertEqual(
                await positionOf(device),
                { chapter: 12, page: 30, percentage: 0.4 },
                `${field}: still shown`,
              );
              assertEqual(
                await device.page.getByTestId("pending-count").count(),
                0,
                `${field}: nothing queued`,
              );
              await form.locator(`input[name="${field}"]`).fill(
                field === "percentage" ? "40" : field === "page" ? "30" : "12",
              );
            }
            if (sql) assertEqual((await storedRow(series, email))?.chapter, 12, "stored: still chapter 12");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[17],
        // Three steps across two tabs, each guarded by STEP_GUARD_MS, after a sign-in.
        timeoutMs: 240_000,
        fn: async () => {
          const email = `reader-o-${run}@readsync.test`;
          const { context, device: first } = await throwawayReader("reader O, tab 1", email);
          try {
            const series = `signout-${run}`;
            await openSeries(first, series);
            await setPosition(first, { chapter: 3, page: 30, percent: 3 });
            await waitForOutboxEmpty(first);
            const second = await tabIn(context, "reader O, tab 2");
            await second.page.goto("/");
            // Tab 1 hears of it through storage and leaves (before, only when its token was due).
            await signOutInOtherTab(first, second);
            if (sql) assertEqual((await storedRow(series, email))?.page, 30, "nothing more was saved");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[18],
        fn: async () => {
          const email = `reader-q-${run}@readsync.test`;
          const { context, device } = await throwawayReader("reader Q", email);
          try {
            const series = `vol1-${run}.rsc`;
            const isPage = async (how) => {
              const response = await device.page.reload();
              const type = String(response?.headers()["content-type"]);
              assert(type.startsWith("text/html"), `${how}, reloaded: an HTML page, got ${type}`);
              await device.page.locator("main").getByTestId("position-form").waitFor({ timeout: 10_000 });
              assertEqual(
                await device.page.locator("main").getByTestId("series-title").textContent(),
                series,
                `${how}: the title`,
              );
            };
            // Opened from the library's form, then reloaded (a bookmark, a new tab: a full load).
            const open = device.page.locator("main").getByTestId("open-series");
            await open.locator("input").fill(series);
            await open.locator("button").click();
            await device.page.locator("main").getByTestId("position-form").waitFor();
            await isPage("opened from the library");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[19],
        fn: async () => {
          const email = `reader-t-${run}@readsync.test`;
          const { context, device: first } = await throwawayReader("reader T, tab 1", email);
          try {
            const second = await tabIn(context, "reader T, tab 2");
            const [seriesOne, seriesTwo] = [`tab-one-${run}`, `tab-two-${run}`];
            await openSeries(first, seriesOne);
            await openSeries(second, seriesTwo);
            await waitForStatus(first, "live");
            await waitForStatus(second, "live");
            // The writes that reached the progress function with the answer to each (an offline try
            // never does), and how many of its requests were under way at once (offline tries included).
            const answers = [];
            const reading = [];
            let underWay = 0;
            let mostUnderWay = 0;
            const isWrite = (request) =>
              request.method() === "POST" && /\/functions\/v1\/progress/.test(request.url());
            context.on("request", (request) => {
              if (isWrite(request)) mostUnderWay = Math.max(mostUnderWay, ++underWay);
            });
            const done = (request) => {
              if (isWrite(request)) underWay--;
            };
            context.on("requestfinished", done);
            context.on("requestfailed", done);
            context.on("response", (response) => {
              const request = response.request();
              if (!isWrite(request)) return;
              const body = JSON.parse(request.postData() ?? "{}");
              reading.push(
                response.json().catch(() => null).then((answer) => {
                  const results = answer?.results ?? [answer];
                  (body.writes ?? [body]).forEach((write, k) =>
                    answers.push({ write, status: response.status(), result: results[k] ?? null })
                  );
                }),
              );
            });
            await context.setOffline(true);
            await waitForStatus(first, "offline");
            await waitForStatus(second, "offline");
            await setPosition(first, { chapter: 1, page: 11, percent: 1 });
            await setPosition(second, { chapter: 2, page: 22, percent: 2 });
            // One outbox: each tab holds both writes.
            for (const tab of [first, second]) {
              await eventually(
                async () =>
                  assertEqual(
                    await tab.page.getByTestId("pending-count").getAttribute("data-count"),
                    "2",
                    "queued",
                  ),
                { what: `${tab.label} to hold both writes` },
              );
            }
            // Back online: every tab hears it at once; one tab sends at a time, and a write one tab got
            // answered is let go by the other as soon as it sees the answer's name in storage. Nothing
            // guarantees it sees that by the time it takes the Web Lock (a grant can come before the
            // other tab's last localStorage writes reach it: seen under load), so it may send such a
            // write again, at most once more: the server answers a replay as the first time, stores
            // nothing new and logs no conflict. That is what is checked, not the number of sends.
            await context.setOffline(false);
            await waitForOutboxEmpty(first);
            await waitForOutboxEmpty(second);
            await Promise.all(reading);
            assertEqual(mostUnderWay, 1, "requests under way at once");
            const bySeries = new Map();
            for (const answer of answers) {
              // A try the API client retried (a 5xx under load) stored nothing: its retry is the send.
              if (answer.status !== 200) continue;
              bySeries.set(answer.write.series_id, [...(bySeries.get(answer.write.series_id) ?? []), answer]);
            }
            assertEqual([...bySeries.keys()].sort(), [seriesOne, seriesTwo].sort(), "the writes answered");
            for (const [series, page] of [[seriesOne, 11], [seriesTwo, 22]]) {
              const [once, ...again] = bySeries.get(series);
              assertEqual(once.write.page, page, `${series} sent`);
              assertEqual(
                [once.result?.won, once.result?.conflict, Date.parse(once.result?.progress?.updated_at)],
                [true, null, Date.parse(once.write.updated_at)],
                `${series} stored as sent`,
              );
              assert(again.length <= 1, `${series} sent ${again.length + 1} times (once more at most)`);
              for (const repeat of again) {
                log(`(${series} was sent again by a tab that had not yet seen it answered: a replay)`);
                assertEqual(repeat.write, once.write, `${series}'s repeat is the same write`);
                assertEqual(repeat.result, once.result, `${series}'s repeat answered as a replay`);
              }
              if (sql) {
                const [row] = await sql`
                  select p.page, p.updated_at from public.reading_progress p
                  join auth.users u on u.id = p.user_id where u.email = ${email} and p.series_id = ${series}`;
                assertEqual([row?.page, row?.updated_at?.getTime()], [
                  page,
                  Date.parse(once.write.updated_at),
                ], `${series} stored`);
              }
            }
            if (sql) {
              const [{ count }] = await sql`
                select count(*)::int as count from public.reading_progress_conflicts c
                join auth.users u on u.id = c.user_id where u.email = ${email}`;
              assertEqual(count, 0, "conflicts logged (a replay is none)");
            }
            assertEqual([...first.errors, ...second.errors], [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[20],
        fn: async () => {
          const email = `reader-s-${run}@readsync.test`;
          const series = `sync-now-${run}`;
          // The backoff's jitter drawn at 0.9 of its ceiling (this context only): the retry after the
          // failure below comes 54 s after it, a step the button must not wait for.
          const context = await ownContext();
          await context.addInitScript(() => {
            Math.random = () => 0.9;
          });
          try {
            const device = await tabIn(context, "reader S");
            if (!devMode) passwords.set(email, await createAuthUser(supabaseUrl, serviceRoleKey, email));
            await signIn(device, email);
            const { page } = device;
            await openSeries(device, series);
            await waitForStatus(device, "live");
            const button = page.getByRole("button", { name: "Sync now" });
            assertEqual(await button.isEnabled(), true, "Sync now is offered");
            // An outage under way for a while (five failures in a row, the last with no answer: the
            // ceiling is at 60 s), and the API unreachable (its connections refused).
            const scheduleKey = await page.evaluate(() =>
              `readsync.outboxSchedule.${JSON.parse(localStorage.getItem("readsync.session")).userId}`
            );
            await page.evaluate((key) => {
              const now = Date.now();
              localStorage.setItem(
                key,
                JSON.stringify({
                  failures: 5,
                  sharedAt: now,
                  noAnswer: true,
                  editMaySkip: true,
                  retryAt: now + 30_000,
                  retryAfterUntil: 0,
                }),
              );
            }, scheduleKey);
            const writes = "**/functions/v1/progress**";
            const attempts = [];
            await page.route(writes, (route) => {
              if (route.request().method() !== "POST") return route.continue();
              attempts.push(Date.now());
              return route.abort("connectionrefused");
            });
            await setPosition(device, { chapter: 3, page: 33, percent: 3 });
            // The edit tries once (no answer: it may), fails, and waits for the retry.
            const shared = () =>
              page.evaluate((key) => JSON.parse(localStorage.getItem(key) ?? "null"), scheduleKey);
            const retryAt = await eventually(async () => {
              const state = await shared();
              assertEqual(state?.failures, 6, "the failed try is counted");
              return state.retryAt;
            }, { what: "the write's try to fail" });
            assertEqual(
              await page.getByTestId("pending-count").getAttribute("data-count"),
              "1",
              "the write waits",
            );
            // The API is back (its answer held until the test lets it go); the reader presses Sync now.
            await page.unroute(writes);
            let letGo = () => {};
            const held = new Promise((resolve) => letGo = resolve);
            const sent = [];
            await page.route(writes, async (route) => {
              if (route.request().method() !== "POST") return route.continue();
              sent.push(Date.now());
              await held;
              return route.continue();
            });
            const control = page.getByTestId("sync-now");
            await button.click();
            await eventually(() => assertEqual(sent.length, 1, "sent"), { what: "Sync now to send" });
            assertEqual(await control.isDisabled(), true, "disabled while the send runs");
            assertEqual(await control.getAttribute("aria-busy"), "true", "busy");
            letGo();
            await waitForOutboxEmpty(device);
            assert(sent[0] < retryAt, `sent before the backoff's next step (${retryAt - sent[0]} ms ahead)`);
            assert(attempts.length > 0, "tried while it was unreachable");
            if (sql) assertEqual((await storedRow(series, email))?.page, 33, "stored");
            await eventually(
              async () => assertEqual(await control.getAttribute("data-state"), "done", "outcome"),
              { what: "Sync now to say it is done" },
            );
            assertEqual(await button.isEnabled(), true, "offered again");
            assertEqual(await shared(), null, "the run of failures is over");
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[21],
        fn: async () => {
          // A reader on a slow device: the page is shown (server-rendered) well before its script runs.
          const email = `reader-h-${run}@readsync.test`;
          const { context, device } = await throwawayReader("reader H", email);
          try {
            const { page } = device;
            const signOut = page.getByRole("button", { name: "Sign out" });
            const tokenStatus = async () => (await context.request.get("/auth/token")).status();

            // A click while none of the page's scripts has run: the form's own POST signs out.
            let scripts = await holdScripts(page);
            await page.goto("/", { waitUntil: "commit" });
            await scripts.allHeld();
            await signOut.click();
            await arrivedAt(page, "/sign-in"); // the scripts still held: nothing of the page ran
            await scripts.letGo();
            assertEqual(await tokenStatus(), 401, "/auth/token after a click before the script ran");

            // A press begun before the script runs and ended after it ran (a slow device's long task in
            // between), near the button's start as a thumb may land: the button must still be there.
            await signIn(device, email);
            scripts = await holdScripts(page);
            await page.goto("/", { waitUntil: "commit" });
            await scripts.allHeld();
            const placeOf = async () => {
              const box = await signOut.boundingBox();
              return box && [box.x, box.y, box.width, box.height].map(Math.round);
            };
            const seen = await placeOf();
            assert(seen, "Sign out is shown before the script runs");
            const [x, y] = [seen[0] + 8, seen[1] + seen[3] / 2];
            await page.evaluate(() =>
              addEventListener("mousedown", (event) => {
                globalThis.__readsyncPressed = event.target.closest("button")?.textContent ??
                  event.target.tagName;
              }, { capture: true, once: true })
            );
            await page.mouse.move(x, y);
            await page.mouse.down();
            await eventually(
              async () =>
                assertEqual(await page.evaluate(() => globalThis.__readsyncPressed), "Sign out", "pressed"),
              { what: "the press to land on Sign out" },
            );
            await scripts.letGo();
            await hydrated(page);
            assertEqual(
              await placeOf(),
              seen,
              "Sign out's place once the page's script ran (device id shown)",
            );
            await waitForStatus(device, "live");
            assertEqual(await placeOf(), seen, "Sign out's place once live");
            await page.mouse.up();
            await arrivedAt(page, "/sign-in");
            assertEqual(await tokenStatus(), 401, "/auth/token after the press");
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[22],
        // Steps across two tabs, each guarded by STEP_GUARD_MS, after a sign-in.
        timeoutMs: 300_000,
        fn: async () => {
          const email = `reader-s-${run}@readsync.test`;
          const { context, device: first } = await throwawayReader("reader S, tab 1", email);
          try {
            const series = `signout-retry-${run}`;
            await openSeries(first, series);
            await setPosition(first, { chapter: 3, page: 30, percent: 3 });
            await waitForOutboxEmpty(first);
            const second = await tabIn(context, "reader S, tab 2");
            await second.page.goto("/");
            /** A promise's resolution, or a failure saying what did not come within STEP_GUARD_MS (a hang guard). */
            const within = (promise, what) => {
              let timer;
              const guard = new Promise((_, reject) => {
                timer = setTimeout(
                  () => reject(new Error(`${what}: nothing within ${STEP_GUARD_MS} ms`)),
                  STEP_GUARD_MS,
                );
              });
              return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
            };
            // Tab 1's first check of /auth/token gets no answer (the connection is refused); its next
            // one is held until the test lets it through to the server (which then answers 401).
            // (Node 20 has no Promise.withResolvers.)
            const deferred = () => {
              let resolve;
              const promise = new Promise((r) => resolve = r);
              return { promise, resolve };
            };
            const firstFailed = deferred();
            const secondAsked = deferred();
            const letThrough = deferred();
            let checks = 0;
            await first.page.route("**/auth/token", async (route) => {
              checks++;
              if (checks === 1) {
                await route.abort("connectionrefused");
                return firstFailed.resolve();
              }
              if (checks === 2) secondAsked.resolve();
              await letThrough.promise;
              return route.continue();
            });
            const posts = [];
            await first.page.route("**/functions/v1/progress**", (route) => {
              if (route.request().method() === "POST") posts.push(route.request().url());
              return route.continue();
            });
            await hydrated(second.page);
            await second.page.getByRole("button", { name: "Sign out" }).click({ timeout: STEP_GUARD_MS });
            await arrivedAt(second.page, "/sign-in");
            await within(firstFailed.promise, "tab 1's check after the sign-out");
            // A page turn while tab 1 does not know yet: queued, not sent with a token whose session
            // may be (here: is) signed out, which the API would still take until the token expires.
            await setPosition(first, { chapter: 4, page: 40, percent: 4 });
            await eventually(
              async () =>
                assertEqual(
                  await first.page.getByTestId("pending-count").getAttribute("data-count"),
                  "1",
                  "queued",
                ),
              { timeoutMs: STEP_GUARD_MS, what: "the page turn to be queued" },
            );
            // Before, the failed check was the last word: the tab stayed, and sent the page turn.
            await within(
              secondAsked.promise,
              "tab 1 to ask /auth/token again (the backoff's first step is under 3 s)",
            );
            assertEqual(posts, [], "nothing sent while the answer was not known");
            letThrough.resolve();
            await arrivedAt(first.page, "/sign-in");
            assertEqual(posts, [], "nothing sent with the signed-out session's token");
            if (sql) assertEqual((await storedRow(series, email))?.page, 30, "nothing more was saved");
            assertEqual(first.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[23],
        fn: async () => {
          // A reader on a slow device: the library is shown (server-rendered) well before its script runs.
          const email = `reader-o-${run}@readsync.test`;
          const series = `open-early-${run}`;
          const { context, device } = await throwawayReader("reader O", email);
          try {
            const { page } = device;
            const syncNow = page.getByTestId("sync-now");
            const placesOf = async () => {
              const boxes = [];
              for (const id of ["sync-now", "connection-status"]) {
                const box = await page.getByTestId(id).boundingBox();
                boxes.push(box && [box.x, box.y, box.width, box.height].map(Math.round));
              }
              return boxes;
            };
            const scripts = await holdScripts(page);
            await page.goto("/", { waitUntil: "commit" });
            await scripts.allHeld();
            // Sync now cannot act yet (its handler is the script's): it says so by being disabled.
            await syncNow.waitFor();
            assertEqual(await syncNow.isDisabled(), true, "Sync now before the script ran");
            // Open series, typed and submitted while none of the page's scripts has run: the form's own
            // GET opens the series page, whose scripts are held too (nothing of either page ran).
            const openForm = page.getByTestId("open-series");
            await openForm.getByRole("textbox", { name: "Series id" }).fill(series);
            await openForm.getByRole("button", { name: "Open series" }).click();
            await arrivedAt(page, `/series/${series}`);
            await page.locator("main").getByTestId("position-form").waitFor({ timeout: STEP_GUARD_MS });
            assertEqual(await page.getByTestId("series-title").textContent(), series, "the series shown");
            await scripts.allHeld();
            assertEqual(
              await syncNow.isDisabled(),
              true,
              "Sync now on the series page before the script ran",
            );
            const seen = await placesOf();
            assert(seen.every(Boolean), "Sync now and the status are shown before the script runs");
            // One status area in the header (not one .topbar-right nested in another), holding both.
            const statusAreas = () =>
              page.evaluate(() =>
                [...document.querySelectorAll(".topbar-right")].map((area) =>
                  ["sync-now", "connection-status"].filter((id) =>
                    area.querySelector(`[data-testid="${id}"]`)
                  )
                )
              );
            assertEqual(
              await statusAreas(),
              [["sync-now", "connection-status"]],
              "the header's status areas",
            );
            // The script runs: the status area keeps its place while the device id and the status fill in.
            await scripts.letGo();
            await hydrated(page);
            assertEqual(await placesOf(), seen, "Sync now's and the status's places once the script ran");
            assertEqual(
              await statusAreas(),
              [["sync-now", "connection-status"]],
              "the header's status areas once the script ran",
            );
            await waitForStatus(device, "live");
            assertEqual(await placesOf(), seen, "Sync now's and the status's places once live");
            assertEqual(await syncNow.isEnabled(), true, "Sync now once the script ran");
            await syncNow.click();
            await eventually(
              async () => assertEqual(await syncNow.getAttribute("data-state"), "done", "Sync now's outcome"),
              { what: "Sync now to run and say it is done", timeoutMs: STEP_GUARD_MS },
            );
            // Once the script runs, Open series is the script's, as before: no page load.
            await page.goto("/");
            await hydrated(page);
            await page.evaluate(() => globalThis.__readsyncSameDocument = true);
            await openForm.getByRole("textbox", { name: "Series id" }).fill(`${series}-2`);
            await openForm.getByRole("button", { name: "Open series" }).click();
            await page.locator("main").getByTestId("position-form").waitFor({ timeout: STEP_GUARD_MS });
            assertEqual(new URL(page.url()).pathname, `/series/${series}-2`, "the series page");
            assertEqual(await page.getByTestId("series-title").textContent(), `${series}-2`, "its title");
            assertEqual(
              await page.evaluate(() => globalThis.__readsyncSameDocument),
              true,
              "the same document (a client-side navigation, no page load)",
            );
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[24],
        fn: async () => {
          // A reader on a slow device: the series page is shown (server-rendered) well before its script
          // runs, and its controls' handlers are the script's.
          const email = `reader-p-${run}@readsync.test`;
          const series = `turn-early-${run}`;
          const { context, device } = await throwawayReader("reader P", email);
          try {
            const { page } = device;
            await openSeries(device, series);
            await setPosition(device, { chapter: 2, page: 20, percent: 2 });
            await waitForOutboxEmpty(device);
            const form = page.locator("main").getByTestId("position-form");
            const controls = [
              ...["chapter", "page", "percentage"].map((name) => form.locator(`input[name="${name}"]`)),
              ...["save-position", "next-page", "next-chapter"].map((id) => form.getByTestId(id)),
            ];
            const placesOf = async () => {
              const boxes = [];
              for (const control of controls) {
                const box = await control.boundingBox();
                boxes.push(box && [box.x, box.y, box.width, box.height].map(Math.round));
              }
              return boxes;
            };
            const disabled = async () => {
              const states = [];
              for (const control of controls) states.push(await control.isDisabled());
              return states;
            };
            const hint = form.getByTestId("position-form-waiting");

            const scripts = await holdScripts(page);
            await page.goto(`/series/${series}`, { waitUntil: "commit" });
            await form.waitFor({ timeout: STEP_GUARD_MS });
            await scripts.allHeld();
            // Before, the fields took input the script's first render then put back, Next page and Next
            // chapter did nothing, and Save (the form's own submit) reloaded the page with the fields in
            // its address: now none of them can be used yet, and the form says why.
            assertEqual(
              await disabled(),
              controls.map(() => true),
              "the form's controls before the script ran",
            );
            const said = await hint.textContent({ timeout: STEP_GUARD_MS });
            assert(/once the page has finished loading/i.test(said ?? ""), `a hint says why: ${said}`);
            assertEqual(await positionOf(device), { chapter: 2, page: 20, percentage: 0.02 }, "shown");
            const seen = await placesOf();
            assert(seen.every(Boolean), "the fields and buttons are shown before the script runs");

            await scripts.letGo();
            await hydrated(page);
            await eventually(
              async () => assertEqual(await disabled(), controls.map(() => false), "the form's controls"),
              { what: "the form to be usable once the script ran", timeoutMs: STEP_GUARD_MS },
            );
            assertEqual(await hint.count(), 0, "the hint once the form is usable");
            assertEqual(await placesOf(), seen, "the fields' and buttons' places once the script ran");
            await waitForStatus(device, "live");
            assertEqual(await placesOf(), seen, "their places once live");
            await form.getByTestId("next-page").click();
            await waitForPosition(device, { chapter: 2, page: 21, percentage: 0.02 });
            await form.getByTestId("next-chapter").click();
            await waitForPosition(device, { chapter: 3, page: 1, percentage: 0.02 });
            await waitForOutboxEmpty(device);
            if (sql) {
              const row = await storedRow(series, email);
              assertEqual([row?.chapter, row?.page], [3, 1], "stored");
            }
            assertEqual(new URL(page.url()).search, "", "no form fields in the address");
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[25],
        fn: async () => {
          const email = `reader-i-${run}@readsync.test`;
          const series = `open-fixed-${run}`;
          const { context, device } = await throwawayReader("reader I", email);
          try {
            const { page } = device;
            const scripts = await holdScripts(page);
            await page.goto("/", { waitUntil: "commit" });
            await scripts.allHeld();
            // Typed and submitted before the library's script has run (so not checked in the page).
            const typed = `<i>${series}</i> vol 2`;
            const openForm = page.getByTestId("open-series");
            await openForm.getByRole("textbox", { name: "Series id" }).fill(typed);
            const answered = page.waitForResponse(
              (response) => new URL(response.url()).pathname === "/open-series",
              { timeout: STEP_GUARD_MS },
            );
            await openForm.getByRole("button", { name: "Open series" }).click();
            const response = await answered;
            assertEqual(response.status(), 400, "an invalid id is still refused");
            assert(
              (response.headers()["content-type"] ?? "").startsWith("text/html"),
              `a page for the reader, not ${response.headers()["content-type"]}`,
            );
            // Before, the reader got the raw JSON error. Now a page says what is wrong, keeps what was
            // typed (as text, never as markup) and opens the corrected id.
            const refusal = page.getByRole("alert");
            await refusal.waitFor({ timeout: STEP_GUARD_MS });
            assertEqual(await refusal.getAttribute("data-error"), "invalid_series_id", "the code");
            assert((await refusal.textContent()).includes(typed), "the refusal names what was typed");
            assertEqual(await page.locator("i").count(), 0, "what was typed is not markup");
            const field = page.getByRole("textbox", { name: "Series id" });
            assertEqual(await field.inputValue(), typed, "what was typed, kept");
            assertEqual(await page.getByRole("link", { name: /library/i }).getAttribute("href"), "/", "back");
            await field.fill(series);
            await page.getByRole("button", { name: "Open series" }).click();
            await arrivedAt(page, `/series/${series}`);
            await page.locator("main").getByTestId("position-form").waitFor({ timeout: STEP_GUARD_MS });
            assertEqual(await page.getByTestId("series-title").textContent(), series, "the series shown");
            await scripts.letGo();
            await hydrated(page);

            // An API-style caller (no HTML in its Accept) keeps the machine-readable answer.
            for (const accept of ["application/json", "*/*"]) {
              const api = await context.request.get(`/open-series?id=${encodeURIComponent(typed)}`, {
                headers: { accept },
                maxRedirects: 0,
              });
              assertEqual(api.status(), 400, `status for Accept: ${accept}`);
              assertEqual((await api.json()).error, "invalid_series_id", `code for Accept: ${accept}`);
              assert(
                /\baccept\b/i.test(api.headers()["vary"] ?? ""),
                `Vary names Accept (${api.headers()["vary"]})`,
              );
            }
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[26],
        fn: async () => {
          const email = `reader-w-${run}@readsync.test`;
          const series = `waiting-${run}`;
          const { context, device } = await throwawayReader("reader W", email);
          try {
            const { page } = device;
            // A write that waits: the API is unreachable (its connections refused) when it is made.
            const writes = "**/functions/v1/progress**";
            await page.route(
              writes,
              (route) =>
                route.request().method() === "POST" ? route.abort("connectionrefused") : route.continue(),
            );
            await openSeries(device, series);
            await setPosition(device, { chapter: 5, page: 50, percent: 5 });
            const count = page.getByTestId("pending-count");
            await eventually(
              async () => assertEqual(await count.getAttribute("data-count"), "1", "waiting"),
              {
                what: "the write to wait",
              },
            );
            // The next visit, on a slow device: the server knows nothing of it; the script finds it.
            const placesOf = async () => {
              const boxes = [];
              for (const id of ["sync-now", "connection-status"]) {
                const box = await page.getByTestId(id).boundingBox();
                boxes.push(box && [box.x, box.y, box.width, box.height].map(Math.round));
              }
              return boxes;
            };
            const scripts = await holdScripts(page);
            await page.goto("/", { waitUntil: "commit" });
            await scripts.allHeld();
            await page.getByTestId("sync-now").waitFor({ timeout: STEP_GUARD_MS });
            assertEqual(await count.count(), 0, "no count before the script ran");
            const seen = await placesOf();
            assert(seen.every(Boolean), "Sync now and the status are shown before the script runs");
            await scripts.letGo();
            await hydrated(page);
            await eventually(
              async () => assertEqual(await count.getAttribute("data-count"), "1", "counted"),
              {
                what: "the waiting write to be counted",
                timeoutMs: STEP_GUARD_MS,
              },
            );
            assert(
              (await count.textContent()).includes("1 change waiting to sync"),
              `the count says so: ${await count.textContent()}`,
            );
            assertEqual(await placesOf(), seen, "Sync now's and the status's places once counted");
            // The library shows it too, and the page hydrated without an error (the library's part is
            // hydrated after the count: it showed the write the server's HTML did not have, React's #418).
            const item = page.getByTestId(`library-item-${series}`);
            await item.waitFor({ timeout: STEP_GUARD_MS });
            assertEqual(
              await item.getByTestId("library-position").textContent(),
              "Chapter 5 · Page 50 · 5%",
              "shown",
            );
            assertEqual(device.errors, [], "page errors once the script ran");
            // Reachable again, Sync now sends it.
            await page.unroute(writes);
            const syncNow = page.getByTestId("sync-now");
            await eventually(async () => assertEqual(await syncNow.isEnabled(), true, "Sync now offered"), {
              what: "Sync now to be offered",
            });
            await syncNow.click();
            await waitForOutboxEmpty(device);
            if (sql) assertEqual((await storedRow(series, email))?.page, 50, "stored");
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      // TESTS[27] to [29] each start one next start of their own (a whole start, at most its 60 s
      // timeout, and a stop), so that none of them nears the harness's 90 s limit on a loaded machine
      // (they were one test, three starts in a row).
      {
        name: TESTS[27],
        fn: async () => {
          if (env("READSYNC_WEB_URL")) throw new SkipTest(`needs a build of its own (app at ${webUrl})`);
          await withHeldPort(async (heldPort) => {
            let taken = null;
            const refused = await startOwnWebApp({ port: heldPort }).then((app) => {
              taken = app;
              return null;
            }, (error) => error);
            if (taken) await taken.stop();
            assert(!taken, `port ${heldPort} (held) was taken for the app: ${taken?.url}`);
            assert(
              refused.message.includes(`port ${heldPort} (127.0.0.1) is already in use`),
              `the refusal names the port: ${refused.message}`,
            );
          });
        },
      },
      {
        name: TESTS[28],
        fn: async () => {
          if (env("READSYNC_WEB_URL")) throw new SkipTest(`needs a build of its own (app at ${webUrl})`);
          await withHeldPort(async (heldPort) => {
            const app = await startOwnWebApp({});
            try {
              assertEqual(app.url, `http://127.0.0.1:${app.port}`, "the URL names the port it serves on");
              assert(app.port !== heldPort, "not the held port");
              const response = await fetch(`${app.url}/sign-in`);
              assert(
                /data-testid="password-sign-in"/.test(await response.text()),
                `the app answers at ${app.url}`,
              );
            } finally {
              await app.stop();
            }
          });
        },
      },
      {
        name: TESTS[29],
        fn: async () => {
          if (env("READSYNC_WEB_URL")) throw new SkipTest(`needs a build of its own (app at ${webUrl})`);
          // A next start whose "- Local:" line reads otherwise (here a preload drops it from its output):
          // it says it is ready, and the start says at once that no port was printed, showing what was,
          // not after its whole start timeout (10 minutes here). The guard only stops a hang: 60 s, the
          // start timeout every other start of this suite has (the app's own included), so a machine too
          // slow for it would fail those too; with the stop's 5 s at most, within the harness's 90 s.
          const preloadDir = mkdtempSync(path.join(os.tmpdir(), "readsync-no-local-line-"));
          try {
            const preload = path.join(preloadDir, "drop-local-line.cjs");
            writeFileSync(
              preload,
              `const write = process.stdout.write.bind(process.stdout);
               process.stdout.write = (chunk, ...rest) => /- Local:/.test(String(chunk)) || write(chunk, ...rest);`,
            );
            let started = null;
            let guard;
            const outcome = await Promise.race([
              startOwnWebApp({ startTimeoutMs: 600_000, env: { NODE_OPTIONS: `--require ${preload}` } }).then(
                (app) => {
                  started = app;
                  return null;
                },
                (error) => error,
              ),
              new Promise((resolve) => {
                guard = setTimeout(() => resolve("hang"), 60_000);
              }),
            ]);
            clearTimeout(guard);
            if (started) await started.stop();
            assert(!started, `started without a "- Local:" line: ${started?.url}`);
            assert(outcome !== "hang", "the start still waited 60 s after the server said it was ready");
            assert(
              /^next start says it is ready but printed no "- Local: http:\/\/<host>:<port>" line to read its port from; it printed:\n/
                .test(outcome.message),
              `the refusal says why: ${outcome.message}`,
            );
            assert(
              /Ready in/.test(outcome.message),
              `it shows what the server printed: ${outcome.message}`,
            );
          } finally {
            rmSync(preloadDir, { recursive: true, force: true });
          }
        },
      },
      {
        name: TESTS[30],
        fn: async () => {
          const email = `reader-x-${run}@readsync.test`;
          const { context, device: page } = await throwawayReader(
            "reader X, the page open through the clear",
            email,
          );
          try {
            const series = `cleared-${run}`;
            const ownId = async (device) =>
              (await device.page.getByTestId("device-id").textContent())?.trim();
            await openSeries(page, series);
            await waitForStatus(page, "live");
            await hydrated(page.page);
            const oldId = await ownId(page);
            // The reader clears the site's storage with the page open, as the browser's "Clear site data" does
            // (the sign-in cookie kept): the page keeps writing with the id it read, a tab opened now makes a
            // new one.
            const cdp = await context.newCDPSession(page.page);
            await cdp.send("Storage.clearDataForOrigin", {
              origin: new URL(webUrl).origin,
              storageTypes: "local_storage",
            });
            await cdp.detach();
            const opened = await tabIn(context, "reader X, a tab opened after the clear");
            await openSeries(opened, series);
            await waitForStatus(opened, "live");
            await hydrated(opened.page);
            const newId = await ownId(opened);
            assert(
              newId && oldId && newId !== oldId,
              `a new device id in the tab opened after the clear (${newId})`,
            );

            // The page open through the clear saves, under its old id: the tab opened after it names that save
            // this browser's, not another device's.
            await setPosition(page, { chapter: 4, page: 40, percent: 40 });
            await waitForPosition(opened, { chapter: 4, page: 40, percentage: 0.4 });
            const source = opened.page.locator("main").getByTestId("current-source");
            await eventually(async () => {
              assertEqual(await source.getAttribute("data-device"), oldId, "saved under the old id");
              const text = (await source.textContent()) ?? "";
              assert(
                text.includes(`From this browser (its other device id ${oldId})`),
                `the series page says ${text}`,
              );
            }, { what: "the tab opened after the clear to name the page's save this browser's" });
            await opened.page.goto("/");
            const line = opened.page.locator("main").getByTestId(`library-item-${series}`).locator(".meta");
            await eventually(async () => {
              const text = (await line.textContent()) ?? "";
              assert(
                text.includes(`this browser (its other device id ${oldId})`),
                `the library says ${text}`,
              );
            }, {
              what: "the library of the tab opened after the clear to name the page's save this browser's",
            });
            await shot(opened, "31-tab-after-clear-names-this-browser");

            // And the other way round: the page names the new tab's save this browser's too.
            await openSeries(opened, series);
            await setPosition(opened, { chapter: 5, page: 50, percent: 50 });
            await waitForPosition(page, { chapter: 5, page: 50, percentage: 0.5 });
            const pageSource = page.page.locator("main").getByTestId("current-source");
            await eventually(async () => {
              assertEqual(await pageSource.getAttribute("data-device"), newId, "saved under the new id");
              const text = (await pageSource.textContent()) ?? "";
              assert(
                text.includes(`From this browser (its other device id ${newId})`),
                `the page says ${text}`,
              );
            }, { what: "the page open through the clear to name the new tab's save this browser's" });
            if (sql) {
              // The page can show the new tab's save from the browser's shared outbox before the API has
              // stored it, so the row is waited for, not read once.
              await eventually(async () => {
                assertEqual(
                  await storedRow(series, email),
                  { chapter: 5, page: 50, percentage: 0.5, device_id: newId },
                  "stored row",
                );
              }, { what: "the new tab's save to be stored" });
            }
            assertEqual([...page.errors, ...opened.errors], [], "page errors");
          } finally {
            await context.close();
          }
        },
      },
      {
        name: TESTS[31],
        fn: async () => {
          if (env("READSYNC_WEB_URL")) throw new SkipTest(`needs a build of its own (app at ${webUrl})`);
          if (!devMode) throw new SkipTest("npm start's development sign-in (a local stack)");
          // The suite's API listens on 127.0.0.1 only; this stands in for it on every interface as Docker
          // publishes supabase start's gateway (docker-proxy: a TCP relay on the published port), on 127.0.0.2,
          // the address the device uses here for this machine's network address (a test sends nothing to any
          // address but loopback ones). Every connection it relays is counted.
          const api = new URL(supabaseUrl);
          let relayed = 0;
          const sockets = new Set();
          const relay = net.createServer((client) => {
            relayed++;
            const upstream = net.connect(Number(api.port), api.hostname);
            for (const socket of [client, upstream]) {
              sockets.add(socket);
              socket.on("error", () => {});
              socket.on("close", () => sockets.delete(socket));
            }
            client.pipe(upstream).pipe(client);
          });
          await new Promise((resolve, reject) => relay.listen(0, "127.0.0.2", resolve).once("error", reject));
          const relayPort = relay.address().port;
          const app = await startOwnWebApp({
            host: "0.0.0.0",
            browserApiPort: relayPort,
            jwtSecret,
            dbUrl,
            devSignIn: true,
          });
          const context = await browser.newContext({
            baseURL: `http://127.0.0.2:${app.port}`,
            viewport,
            locale: "en-GB",
            timezoneId: "UTC",
          });
          try {
            assertEqual(app.url, `http://127.0.0.1:${app.port}`, "its URL for this machine");
            const device = await tabIn(context, "a device on the network");
            const apiRequests = [];
            device.page.on("request", (request) => {
              const url = new URL(request.url());
              if (url.port !== String(app.port)) {
                apiRequests.push(`${url.protocol}//${url.host}${url.pathname}`);
              }
            });
            device.page.on("websocket", (socket) => apiRequests.push(socket.url().split("?")[0]));
            const email = `reader-lan-${run}@readsync.test`;
            await signIn(device, email);
            const series = `lan-${run}`;
            await openSeries(device, series);
            await waitForStatus(device, "live");
            await setPosition(device, { chapter: 7, page: 70, percent: 70 });
            await eventually(async () => {
              assertEqual(
                await storedRow(series, email),
                { chapter: 7, page: 70, percentage: 0.7, device_id: device.deviceId },
                "stored row",
              );
            }, { what: "the save made at the other address to be stored" });
            assert(apiRequests.length > 0, "the page called the API");
            const elsewhere = apiRequests.filter((url) => !url.includes(`//127.0.0.2:${relayPort}/`));
            assertEqual(elsewhere, [], "every API request and socket at the address the page was opened at");
            assert(
              apiRequests.some((url) => url === `ws://127.0.0.2:${relayPort}/realtime/v1/websocket`),
              `the Realtime socket at that address: ${apiRequests.join(", ")}`,
            );
            assert(relayed > 0, "the API was reached through the address");
            assertEqual(device.errors, [], "page errors");
          } finally {
            await context.close();
            await app.stop();
            for (const socket of sockets) socket.destroy();
            await new Promise((resolve) => relay.close(resolve));
          }
        },
      },
      {
        name: TESTS[15],
        fn: () => {
          for (const d of devices) assertEqual(d.errors, [], `${d.label} page errors`);
        },
      },
    ];

    const result = await runTests(tests, {
      log,
      filter,
      onFailure: async (test) => {
        const slug = test.name.replace(/[^a-z0-9]+/gi, "-").slice(0, 40);
        for (const d of devices) {
          await shot(d, `FAILED-${slug}-${d.label.replace(/[^a-z0-9]+/gi, "-")}`).catch(() => {});
          if (d.errors.length) log(`${d.label} page errors:\n  ${d.errors.join("\n  ")}`);
        }
        if (webApp) writeArtifact("web-server-output.txt", webApp.output());
      },
    });
    for (const d of devices) if (d.errors.length) log(`${d.label} page errors: ${d.errors.join(" | ")}`);
    log(
      `screenshots in ${path.relative(REPO_ROOT, ARTIFACTS)}/, ${
        Math.round((Date.now() - started) / 1000)
      } s`,
    );
    summary(result.passed, result.failed, result.skipped);
    return result.failed === 0 && result.passed > 0 ? 0 : 1;
  } finally {
    await runCleanups();
    removeSignalHandlers();
  }
}

/**
 * Runs `fn` with a port that another program on this machine holds (another run's server, say): it
 * answers every request, /sign-in included, as a web app that had started there would.
 */
async function withHeldPort(fn) {
  const holder = http.createServer((_req, res) => res.end("not the readsync web app"));
  await new Promise((resolve, reject) => {
    holder.once("error", reject);
    holder.listen(0, "127.0.0.1", resolve);
  });
  try {
    return await fn(holder.address().port);
  } finally {
    holder.closeAllConnections();
    await new Promise((resolve) => holder.close(resolve));
  }
}

/**
 * A gate in front of `target`: while `down`, every connection is dropped (the function "cannot be
 * reached"); otherwise requests are passed on and answered as the target answers.
 */
async function startGate(target) {
  const gate = { down: false, url: "", close: () => Promise.resolve() };
  const server = http.createServer(async (req, res) => {
    if (gate.down) return void res.socket.destroy();
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const headers = { ...req.headers };
    delete headers.host;
    delete headers.connection;
    try {
      const upstream = await fetch(`${target}${req.url}`, {
        method: req.method,
        headers,
        body: ["GET", "HEAD"].includes(req.method) ? undefined : Buffer.concat(chunks),
      });
      const out = {};
      upstream.headers.forEach((value, key) => {
        if (!["content-encoding", "content-length", "transfer-encoding", "connection"].includes(key)) {
          out[key] = value;
        }
      });
      res.writeHead(upstream.status, out);
      res.end(Buffer.from(await upstream.arrayBuffer()));
    } catch {
      res.socket.destroy();
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  gate.url = `http://127.0.0.1:${server.address().port}`;
  gate.close = () => new Promise((resolve) => server.close(() => resolve()));
  return gate;
}

/** Real project: a confirmed user with a password, through the Auth admin API. */
async function createAuthUser(supabaseUrl, serviceRoleKey, email) {
  const password = `pw-${crypto.randomUUID()}`;
  const response = await fetch(`${supabaseUrl}/auth/v1/admin/users`, {
    method: "POST",
    headers: {
      apikey: serviceRoleKey,
      Authorization: `Bearer ${serviceRoleKey}`,
      "Content-Type": "application/json",
    },
    body: JSON.stringify({ email, password, email_confirm: true }),
  });
  if (!response.ok) throw new Error(`creating ${email}: HTTP ${response.status} ${await response.text()}`);
  return password;
}

/** Two device screenshots side by side, captioned, as one picture (rendered by Chromium itself). */
async function saveTwoDevicesPicture(browser, left, right, force) {
  // Only the app (<main>), not the empty viewport below it.
  const [a, b] = await Promise.all([left, right].map((d) => d.page.locator("main").screenshot()));
  const context = await browser.newContext({ viewport: { width: 1000, height: 900 }, deviceScaleFactor: 1 });
  try {
    const page = await context.newPage();
    const figure = (png, title, device) => `
      <figure><figcaption><b>${title}</b> <code>${device}</code></figcaption>
      <img src="data:image/png;base64,${png.toString("base64")}"></figure>`;
    await page.setContent(`<!doctype html><html><head><style>
        body { margin: 0; padding: 16px; background: #e9e6df; font: 15px system-ui, sans-serif; }
        h1 { font-size: 17px; margin: 0 0 12px; }
        .row { display: flex; gap: 16px; }
        figure { margin: 0; background: #fff; border-radius: 12px; padding: 8px; box-shadow: 0 2px 8px #0002; }
        figcaption { padding: 4px 4px 8px; } img { display: block; width: 460px; border: 1px solid #ddd; }
      </style></head><body>
      <h1>readsync: one reader, two devices, in sync over Supabase Realtime</h1>
      <div class="row">${figure(a, "Device 1", left.deviceId)}${figure(b, "Device 2", right.deviceId)}</div>
      </body></html>`);
    const box = await page.locator("body").boundingBox();
    const file = path.join(ARTIFACTS, "two-devices.png");
    await page.screenshot({
      path: file,
      clip: { x: 0, y: 0, width: 1000, height: Math.ceil(box?.height ?? 900) },
    });
    if (force || !existsSync(DOCS_PICTURE)) {
      mkdirSync(path.dirname(DOCS_PICTURE), { recursive: true });
      copyFileSync(file, DOCS_PICTURE);
      log(`wrote ${path.relative(REPO_ROOT, DOCS_PICTURE)}`);
    }
  } finally {
    await context.close();
  }
}

let code = 1;
try {
  code = await main();
} catch (error) {
  console.error(error instanceof Error ? error.stack : error);
  summary(0, 1);
}
process.exit(code);

/** The ref of a Phoenix heartbeat the client sends (a JSON array frame, vsn 2.0.0), else null. */
/** Whether a frame from Realtime is a broadcast: binary (vsn 2.0.0's user broadcast) or a JSON one. */
function isBroadcastFrame(message) {
  if (typeof message !== "string") return true;
  try {
    const frame = JSON.parse(message);
    return (Array.isArray(frame) ? frame[3] : frame?.event) === "broadcast";
  } catch {
    return false;
  }
}

function heartbeatRefOf(message) {
  if (typeof message !== "string") return null;
  try {
    const [, ref, topic, event] = JSON.parse(message);
    return topic === "phoenix" && event === "heartbeat" ? ref : null;
  } catch {
    return null;
  }
}
