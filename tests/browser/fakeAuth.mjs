// A stand-in for Supabase Auth (GoTrue) with just what the web app's Supabase mode calls, so the
// browser tests can exercise that mode without a project: password sign-in and refresh
// (/auth/v1/token), the user check (/auth/v1/user), sign-out (/auth/v1/logout, scope recorded),
// magic links (/auth/v1/otp: the email and the link's redirect_to are recorded, nothing is sent).
// Tokens are HS256 with the local stack's JWT secret, so the real progress function accepts them;
// every other path (functions) is passed through to the stack. `outage` makes /auth/v1/user
// answer 503, as an Auth server that is down would.

import crypto from "node:crypto";
import http from "node:http";

export async function startFakeAuth({ jwtSecret, stackUrl, user }) {
  const state = { outage: false, logoutScopes: [], magicLinks: [] };
  const sign = (payload) => {
    const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part(payload)}`;
    return `${unsigned}.${crypto.createHmac("sha256", jwtSecret).update(unsigned).digest("base64url")}`;
  };
  const verified = (token) => {
    const [h, p, s] = String(token).split(".");
    if (!s || crypto.createHmac("sha256", jwtSecret).update(`${h}.${p}`).digest("base64url") !== s) {
      return null;
    }
    const claims = JSON.parse(Buffer.from(p, "base64url").toString());
    return claims.exp > Date.now() / 1000 ? claims : null;
  };
  const authUser = { id: user.id, aud: "authenticated", role: "authenticated", email: user.email };
  const session = () => {
    const now = Math.floor(Date.now() / 1000);
    return {
      access_token: sign({
        sub: user.id,
        role: "authenticated",
        aud: "authenticated",
        email: user.email,
        iat: now,
        exp: now + 3600,
      }),
      token_type: "bearer",
      expires_in: 3600,
      expires_at: now + 3600,
      refresh_token: crypto.randomBytes(12).toString("hex"),
      user: authUser,
    };
  };

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://fake");
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const body = Buffer.concat(chunks);
    const send = (status, json) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(json === undefined ? "" : JSON.stringify(json));
    };
    if (url.pathname === "/auth/v1/token") {
      const grant = url.searchParams.get("grant_type");
      const input = body.length ? JSON.parse(body.toString()) : {};
      if (grant === "password" && input.email === user.email && input.password === user.password) {
        return send(200, session());
      }
      if (grant === "refresh_token" && input.refresh_token) return send(200, session());
      return send(400, { error_code: "invalid_credentials", msg: "Invalid login credentials" });
    }
    if (url.pathname === "/auth/v1/user") {
      if (state.outage) return send(503, { code: 503, msg: "upstream unavailable" });
      const claims = verified((req.headers.authorization ?? "").replace(/^Bearer /, ""));
      return claims
        ? send(200, authUser)
        : send(401, { code: 401, error_code: "bad_jwt", msg: "invalid JWT" });
    }
    if (url.pathname === "/auth/v1/otp" && req.method === "POST") {
      const input = body.length ? JSON.parse(body.toString()) : {};
      state.magicLinks.push({ email: input.email, redirectTo: url.searchParams.get("redirect_to") });
      return send(200, {});
    }
    if (url.pathname === "/auth/v1/logout") {
      state.logoutScopes.push(url.searchParams.get("scope") ?? "global");
      return send(204);
    }
    // Everything else (the progress function) goes to the real local stack.
    const headers = { ...req.headers };
    delete headers.host;
    const answer = await fetch(stackUrl + req.url, {
      method: req.method,
      headers,
      body: ["GET", "HEAD"].includes(req.method) ? undefined : body,
    }).catch(() => null);
    if (!answer) return send(502, { msg: "stack unreachable" });
    const passOn = [...answer.headers].filter(([k]) =>
      !["content-encoding", "transfer-encoding", "content-length"].includes(k)
    );
    res.writeHead(answer.status, Object.fromEntries(passOn));
    res.end(Buffer.from(await answer.arrayBuffer()));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    state,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
