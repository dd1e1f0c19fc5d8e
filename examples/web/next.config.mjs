// Next.js config for the readsync example app.
//
// The app is built on ../../shared, which is written Deno-style: relative imports with `.ts`
// extensions and the bare imports "zod" and "@supabase/supabase-js" (mapped in /deno.json). Next
// compiles those files as part of this app (they live outside its folder, hence the turbopack root /
// externalDir), and the bare imports resolve to this app's own node_modules, pinned to the versions
// deno.json names, so the browser bundle holds exactly one copy of each.
import path from "node:path";
import { fileURLToPath } from "node:url";

const appDir = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(appDir, "../..");
const sharedPackages = ["zod", "@supabase/supabase-js"];
const pinned = Object.fromEntries(sharedPackages.map((name) => [name, path.join(appDir, "node_modules", name)]));
const sharedDir = path.join(repoRoot, "shared");

const SECURITY_HEADERS = [
  { key: "X-Frame-Options", value: "DENY" },
  { key: "Content-Security-Policy", value: "frame-ancestors 'none'" },
  { key: "X-Content-Type-Options", value: "nosniff" },
  { key: "Referrer-Policy", value: "same-origin" },
];

/** @type {import("next").NextConfig} */
const nextConfig = {
  reactStrictMode: true,
  poweredByHeader: false,
  // Every answer: no framing by other sites (the reader's buttons under someone else's page), no
  // content-type sniffing, and addresses (a sign-in link's ?code=) never sent to other origins.
  async headers() {
    return [{ source: "/:path*", headers: SECURITY_HEADERS }];
  },
  // Resolve and trace files above this folder (../../shared).
  outputFileTracingRoot: repoRoot,
  turbopack: {
    root: repoRoot,
    resolveAlias: {
      // Relative aliases are resolved from this folder (the project), not from the turbopack root.
      ...Object.fromEntries(sharedPackages.map((name) => [name, `./node_modules/${name}`])),
      // deno.json maps "@shared/" to ./shared/; the same alias here (tsconfig.json has it too).
      "@shared/*": "../../shared/*",
    },
  },
  experimental: { externalDir: true },
  webpack(config) {
    config.resolve.alias = { ...config.resolve.alias, ...pinned, "@shared": sharedDir };
    config.resolve.extensionAlias = { ...config.resolve.extensionAlias, ".js": [".ts", ".tsx", ".js"] };
    return config;
  },
};

export default nextConfig;
