// The OpenID provider the identity tests sign in with: panva's certified `oidc-provider`,
// configured here and nothing else. Run: `node provider.mjs STATE.json`.
//
// STATE.json (written by tests/identity/oidc_provider.py):
//   issuer, port          where it listens (loopback only)
//   keys                  private JWKs; the first one signs, the others are still published
//                         (how a provider rotates its keys)
//   clients               registered relying parties (souverain), with their secrets
//   accounts_file         a JSON file of people, read again at every look-up, so a test can
//                         change someone's groups (or remove them) while sessions are open
//   cookie_secret         signs the provider's own cookies
//
// The sign-in page is this script's own (a plain form, nothing loaded from elsewhere):
// the library's development pages fetch fonts from a third-party host.

import { readFileSync } from 'node:fs';
import { timingSafeEqual } from 'node:crypto';
import Provider from 'oidc-provider';

const state = JSON.parse(readFileSync(process.argv[2], 'utf8'));

function accounts() {
  return JSON.parse(readFileSync(state.accounts_file, 'utf8'));
}

function sameSecret(a, b) {
  const left = Buffer.from(String(a));
  const right = Buffer.from(String(b));
  return left.length === right.length && timingSafeEqual(left, right);
}

const CLAIMS = ['email', 'email_verified', 'preferred_username', 'name', 'groups'];

const configuration = {
  clients: state.clients,
  jwks: { keys: state.keys },
  cookies: { keys: [state.cookie_secret] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // ID tokens carry the person's claims (groups included), as Keycloak's and Entra's do.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    RefreshToken: 3600,
  },
  // A refresh token for every client allowed the grant: that is how souverain re-reads
  // someone's groups while their console session lasts.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // First-party: consent is implied, the grant holds the scopes and claims asked for.
  async loadExistingGrant(ctx) {
    const { provider } = ctx.oidc;
    const known = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (known) {
      const found = await provider.Grant.find(known);
      if (found) return found;
    }
    const grant = new provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
    grant.addOIDCClaims(CLAIMS);
    await grant.save();
    return grant;
  },
  async findAccount(ctx, sub) {
    const person = accounts()[sub];
    if (!person) return undefined;
    return {
      accountId: sub,
      async claims() {
        // Read again: the directory may have changed since the session began.
        const now = accounts()[sub] || {};
        const claims = { sub };
        for (const name of CLAIMS) if (now[name] !== undefined) claims[name] = now[name];
        return claims;
      },
    };
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Error', Object.entries(out).map(([k, v]) => `<p>${k}: ${escape(v)}</p>`).join(''));
  },
};

const provider = new Provider(state.issuer, configuration);

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, message) {
  return page('Sign in to the test directory',
    `${message ? `<p id="error">${escape(message)}</p>` : ''}`
    + `<form method="post" action="/interaction/${escape(uid)}/login">`
    + '<label>Username <input name="username" autocomplete="off"></label>'
    + '<label>Password <input name="password" type="password"></label>'
    + '<button type="submit" id="idp-submit">Sign in</button></form>');
}

async function formBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The interaction (sign-in) pages, on the provider's own Koa application.
provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/);
  if (!match) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  ctx.set('Cache-Control', 'no-store');
  if (ctx.method === 'GET' && !match[2]) {
    ctx.type = 'html';
    ctx.body = loginForm(details.uid);
    return undefined;
  }
  if (ctx.method !== 'POST' || !match[2]) return next();
  const form = await formBody(ctx.req);
  const entry = Object.entries(accounts()).find(
    ([, person]) => person.preferred_username === form.get('username'),
  );
  if (!entry || !sameSecret(entry[1].password, form.get('password') || '')) {
    ctx.status = 401;
    ctx.type = 'html';
    ctx.body = loginForm(details.uid, 'Unknown username or wrong password.');
    return undefined;
  }
  await provider.interactionFinished(
    ctx.req, ctx.res, { login: { accountId: entry[0] } }, { mergeWithLastSubmission: false },
  );
  return undefined;
});

const server = provider.listen(state.port, '127.0.0.1', () => {
  process.stdout.write(`ready ${state.issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
