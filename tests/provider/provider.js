// A real OpenID provider (npm `oidc-provider`) for the codex-portal test suite.
//
// Run: `IDP_PORT=0 node tests/provider/provider.js`. Listens on 127.0.0.1 only, then prints exactly one
// line `LISTENING http://127.0.0.1:<port>` (the issuer). Provider events are printed as one line each,
// `EVENT {"event":"grant.success",...}`, never with a token, code or user code value in them.
// Other lines (oidc-provider's own notices) may appear on stdout/stderr: ignore them.
//
// Environment (defaults in brackets):
//   IDP_PORT [0 = any free port]          IDP_CLIENT_ID [codex-portal-test]
//   IDP_ACCESS_TOKEN_TTL [3600] seconds   IDP_DEVICE_CODE_TTL [600] seconds
//   IDP_EMAIL_IN_ID_TOKEN [1]: 1 = the ID token carries email/name; 0 = only userinfo has them
//   IDP_REDIRECT_URIS: comma-separated; default http://{localhost,127.0.0.1,[::1]}/auth/callback.
//     The client is `native`, so oidc-provider matches loopback redirect URIs on any port
//     (RFC 8252 7.3, `stripLoopbackPort` in lib/models/client.js): http://localhost:4321/auth/callback
//     is accepted for the registered http://localhost/auth/callback.
//   IDP_EXIT_ON_STDIN_EOF: when 1, exit once stdin closes (the parent test process died).
//   IDP_OPENAI_AUTH_CLAIM [0]: 1 = ID tokens (and access tokens) carry the claim the Codex CLI reads,
//     "https://api.openai.com/auth": {"chatgpt_account_id": "acct-<login>", "chatgpt_plan_type": "plus"}
//     (an `openid` scope claim, so it is in the ID token whatever IDP_EMAIL_IN_ID_TOKEN says).
//   IDP_JWT_ACCESS_TOKENS [0]: 1 = access tokens are signed JWTs (RFC 9068, `typ: at+jwt`, RS256 with the
//     provider's key, with `exp`, `scope`, `client_id`, `aud` = <issuer>/api), as the Codex CLI needs
//     to decide when to refresh. Done with oidc-provider's resource indicators: every grant defaults
//     to the one resource <issuer>/api. Two consequences of the library, both checked:
//       - userinfo refuses these tokens (401 invalid_token, "token audience prevents accessing the
//         userinfo endpoint"): oidc-provider serves userinfo only to audience-less opaque tokens;
//       - the ID token then carries the scope claims (email, name) even with IDP_EMAIL_IN_ID_TOKEN=0
//         (oidc-provider conforms ID token claims only when userinfo can be used).
//     Refresh works as usual (rotated refresh token, new JWT access token).
//
// Always on: /token also takes a JSON body (`Content-Type: application/json`), which the Codex CLI sends
// when it refreshes ({"client_id", "grant_type", "refresh_token"}, client id app_EMoamEEZ73f0CkXaXp7hrann:
// start with IDP_CLIENT_ID=app_EMoamEEZ73f0CkXaXp7hrann for it). It is re-encoded as
// application/x-www-form-urlencoded before oidc-provider (which reads form bodies only) sees it.
// Scopes: openid profile email offline_access, and the Codex CLI's api.connectors.read and
// api.connectors.invoke (accepted, granted, carry no claims).
//
// Pages: oidc-provider's devInteractions (login: any login + any password; consent: "Continue") and
// its device flow pages at /device. All of them @import a Google web font; a middleware strips it so a
// browser without internet makes no external request.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer, IncomingMessage } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const env = (name, fallback) => process.env[name] || fallback;
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

const port = Number(env('IDP_PORT', '0'));
const clientId = env('IDP_CLIENT_ID', 'codex-portal-test');
const accessTokenTtl = Number(env('IDP_ACCESS_TOKEN_TTL', '3600'));
const deviceCodeTtl = Number(env('IDP_DEVICE_CODE_TTL', '600'));
const emailInIdToken = env('IDP_EMAIL_IN_ID_TOKEN', '1') === '1';
const openaiAuthClaim = env('IDP_OPENAI_AUTH_CLAIM', '0') === '1';
const jwtAccessTokens = env('IDP_JWT_ACCESS_TOKENS', '0') === '1';
const redirectUris = env(
  'IDP_REDIRECT_URIS',
  'http://localhost/auth/callback,http://127.0.0.1/auth/callback,http://[::1]/auth/callback',
).split(',').map((uri) => uri.trim()).filter(Boolean);

// A fresh signing key per run (instead of oidc-provider's well-known development keys).
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-key', use: 'sig', alg: 'RS256' };

// The claim the Codex CLI reads its account from (IDP_OPENAI_AUTH_CLAIM=1).
const OPENAI_AUTH = 'https://api.openai.com/auth';
const openaiAuth = (id) => ({ chatgpt_account_id: `acct-${id}`, chatgpt_plan_type: 'plus' });

// Any login id is an account: sub = login, email = <login>@example.test.
const findAccount = async (_ctx, id) => ({
  accountId: id,
  claims: async () => ({
    sub: id,
    email: `${id}@example.test`,
    email_verified: true,
    name: `${id.charAt(0).toUpperCase()}${id.slice(1)} Example`,
    ...(openaiAuthClaim ? { [OPENAI_AUTH]: openaiAuth(id) } : {}),
  }),
});

const SCOPES = ['openid', 'profile', 'email', 'offline_access', 'api.connectors.read', 'api.connectors.invoke'];

const configuration = {
  clients: [{
    client_id: clientId,
    client_name: 'codex-portal (test)',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token', DEVICE_GRANT],
    response_types: ['code'],
    redirect_uris: redirectUris,
  }],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  findAccount,
  scopes: SCOPES,
  claims: {
    openid: openaiAuthClaim ? ['sub', OPENAI_AUTH] : ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // Access tokens (JWT ones in their payload) carry the Codex CLI's claim too, as OpenAI's do.
  extraTokenClaims: async (_ctx, token) => (
    openaiAuthClaim && token.accountId ? { [OPENAI_AUTH]: openaiAuth(token.accountId) } : undefined
  ),
  conformIdTokenClaims: !emailInIdToken, // false = scope claims go into the ID token too
  pkce: { required: () => true }, // oidc-provider only implements S256
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    userinfo: { enabled: true },
    // IDP_JWT_ACCESS_TOKENS=1: one resource server, the default of every grant, takes JWT access tokens.
    // Without it, resource indicators keep the library's defaults (no resource: opaque access tokens).
    ...(jwtAccessTokens ? { resourceIndicators: { enabled: true } } : {}),
  },
  // oidc-provider issues refresh tokens only when offline_access survived (it needs prompt=consent):
  // a test provider always issues one, and tokens never die with the provider's browser session.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  rotateRefreshToken: () => true, // every use rotates; reusing a consumed one revokes the grant
  ttl: {
    AccessToken: accessTokenTtl,
    DeviceCode: deviceCodeTtl,
    IdToken: accessTokenTtl,
    AuthorizationCode: 60,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    RefreshToken: 14 * 24 * 3600,
  },
};

// Filled in once the issuer (its port) is known.
let apiResource;
if (jwtAccessTokens) {
  Object.assign(configuration.features.resourceIndicators, {
    defaultResource: async () => apiResource,
    useGrantedResource: async () => true, // refresh and code exchange keep the granted resource
    getResourceServerInfo: async (_ctx, resource) => {
      if (resource !== apiResource) throw new errors.InvalidTarget();
      return {
        scope: SCOPES.join(' '),
        audience: apiResource,
        accessTokenFormat: 'jwt',
        accessTokenTTL: accessTokenTtl,
      };
    },
  });
}

// ---- /token with a JSON body (the Codex CLI's refresh): re-encoded as a form before oidc-provider --------
const isJsonTokenRequest = (req) => req.method === 'POST'
  && new URL(req.url, 'http://localhost').pathname === '/token'
  && /^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? '');

async function formEncodedCopy(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 56 * 1024) return null; // oidc-provider's own body limit
    chunks.push(chunk);
  }
  let params;
  try {
    params = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    return null;
  }
  if (params === null || typeof params !== 'object' || Array.isArray(params)) return null;
  const form = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item === null || item === undefined) continue;
      form.append(name, typeof item === 'object' ? JSON.stringify(item) : String(item));
    }
  }
  const body = Buffer.from(form.toString());
  // The same request (method, URL, headers, socket) with the form body, for koa and oidc-provider.
  const copy = new IncomingMessage(req.socket);
  Object.assign(copy, {
    method: req.method,
    url: req.url,
    httpVersion: req.httpVersion,
    httpVersionMajor: req.httpVersionMajor,
    httpVersionMinor: req.httpVersionMinor,
    complete: true,
  });
  copy.headers = {
    ...req.headers,
    'content-type': 'application/x-www-form-urlencoded',
    'content-length': String(body.length),
  };
  copy.push(body);
  copy.push(null);
  return copy;
}

function badJson(res) {
  res.writeHead(400, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ error: 'invalid_request', error_description: 'failed to parse the JSON request body' }));
  emit('grant.error', { route: 'token', error: 'invalid_request', error_detail: 'unparseable JSON body' });
}

// ---- events: one `EVENT {json}` line each; ids of grants are fine, token values never -------------
const emit = (event, fields) => {
  const clean = Object.fromEntries(Object.entries(fields).filter(([, value]) => value !== undefined));
  process.stdout.write(`EVENT ${JSON.stringify({ event, time: Date.now() / 1000, ...clean })}\n`);
};
const about = (ctx) => ({
  route: ctx?.oidc?.route,
  client_id: ctx?.oidc?.client?.clientId,
  grant_type: ctx?.oidc?.params?.grant_type,
});
const failure = (err) => ({
  error: err?.error ?? 'server_error',
  error_description: err?.error_description,
  error_detail: err?.error_detail, // the real reason (e.g. "refresh token already used")
  message: err?.error ? undefined : String(err?.message ?? err),
});
// Model events receive the model: log only what identifies the grant (jti is the token value itself).
const model = (token) => ({
  grant_id: token?.grantId,
  client_id: token?.clientId,
  account_id: token?.accountId,
  error: token?.error, // device_code: access_denied once the user aborted
});

function logEvents(provider) {
  provider.on('grant.success', (ctx) => {
    const { entities, params } = ctx.oidc;
    emit('grant.success', {
      ...about(ctx),
      refresh: params?.grant_type === 'refresh_token',
      rotated: Boolean(entities.RotatedRefreshToken),
      grant_id: (entities.RefreshToken ?? entities.AccessToken)?.grantId,
      account_id: entities.Account?.accountId,
      scope: entities.AccessToken?.scope,
      refresh_token_issued: typeof ctx.body?.refresh_token === 'string',
      id_token_issued: typeof ctx.body?.id_token === 'string',
    });
  });
  for (const name of [
    'grant.error', 'authorization.error', 'device_authorization.error', 'code_verification.error',
    'device_resume.error', 'revocation.error', 'introspection.error', 'userinfo.error', 'server_error',
    'end_session.error', 'discovery.error', 'jwks.error',
  ]) {
    provider.on(name, (ctx, err) => emit(name, { ...about(ctx), ...failure(err) }));
  }
  provider.on('server_error', (_ctx, err) => console.error(err)); // stack trace on stderr
  provider.on('grant.revoked', (ctx, grantId) => emit('grant.revoked', { ...about(ctx), grant_id: grantId }));
  for (const name of ['authorization.accepted', 'authorization.success', 'interaction.ended', 'end_session.success']) {
    provider.on(name, (ctx) => emit(name, about(ctx))); // 2nd argument would carry the code: not logged
  }
  provider.on('interaction.started', (ctx, prompt) => emit('interaction.started', { ...about(ctx), prompt: prompt?.name }));
  provider.on('device_authorization.success', (ctx) => emit('device_authorization.success', about(ctx)));
  for (const kind of ['access_token', 'refresh_token', 'authorization_code', 'device_code']) {
    for (const what of ['saved', 'issued', 'consumed', 'destroyed']) {
      const name = `${kind}.${what}`;
      provider.on(name, (token) => emit(name, model(token)));
    }
  }
}

// ---- start: listen first, so that port 0 gives the issuer its real port ---------------------------
const server = createServer();
server.listen(port, '127.0.0.1', async () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  apiResource = `${issuer}/api`;
  const provider = new Provider(issuer, configuration);
  logEvents(provider);

  provider.use(async (ctx, next) => {
    // A barrier for the test harness: every event printed before this one has been printed.
    if (ctx.path === '/__test__/mark') {
      emit('test.mark', { id: String(ctx.query.id) });
      ctx.body = 'ok';
      return;
    }
    await next();
    // No web font from the internet on any page (devInteractions, device flow, error pages).
    if (typeof ctx.body === 'string' && ctx.body.includes('fonts.googleapis.com')) {
      ctx.body = ctx.body.replace(/@import url\(https:\/\/fonts\.googleapis\.com[^)]*\);?/g, '');
    }
    // oidc-provider has no revocation success event: report one (which kind of token, which grant).
    if (ctx.oidc?.route === 'revocation' && ctx.status === 200) {
      const { AccessToken, RefreshToken } = ctx.oidc.entities;
      const token = RefreshToken ?? AccessToken;
      emit('revocation.success', {
        ...about(ctx),
        token_kind: token?.kind ?? null, // null: unknown or already invalid token (still 200, RFC 7009)
        grant_id: token?.grantId,
      });
    }
  });

  // Static clients are validated lazily: fail now, not on the first request, if the metadata is bad.
  try {
    await provider.Client.find(clientId);
  } catch (err) {
    console.error(`invalid client configuration: ${err.error_description ?? err.message}`);
    process.exit(1);
  }

  const handle = provider.callback();
  server.on('request', (req, res) => {
    if (!isJsonTokenRequest(req)) {
      handle(req, res);
      return;
    }
    formEncodedCopy(req).then(
      (copy) => (copy ? handle(copy, res) : badJson(res)),
      (err) => {
        console.error(err);
        if (!res.headersSent) badJson(res);
      },
    );
  });
  process.stdout.write(`LISTENING ${issuer}\n`);
});

process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
if (process.env.IDP_EXIT_ON_STDIN_EOF === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
}
