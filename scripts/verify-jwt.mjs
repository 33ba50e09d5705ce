// Verify a keygate access token or X-Key-Assertion the way an origin would: against the
// gateway's JWKS (GET /.well-known/jwks.json), with an independent JOSE library (jose).
// Usage: node scripts/verify-jwt.mjs <jwks.json file or JWKS JSON> <token> [typ]
//   typ: at+jwt (access token, the default) or keygate-assertion+jwt (X-Key-Assertion)
// Prints the verified payload as JSON; exits 1, with the reason on stderr, if it does not verify.
// A real origin would also check `iss` and `aud` (jwtVerify options), and, for an assertion,
// that `htm` and `htu` are the request it is answering.
import { readFileSync } from 'node:fs';
import { createLocalJWKSet, jwtVerify } from 'jose';

const [jwksArg, token, typ = 'at+jwt'] = process.argv.slice(2);
if (!jwksArg || !token) {
  console.error('usage: node scripts/verify-jwt.mjs <jwks.json | JWKS JSON> <token> [typ]');
  process.exit(2);
}
const jwks = JSON.parse(jwksArg.trim().startsWith('{') ? jwksArg : readFileSync(jwksArg, 'utf8'));

try {
  const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), {
    algorithms: ['EdDSA'], // exactly the gateway's algorithm: never none, never HS256
    typ,
  });
  console.log(JSON.stringify(payload));
} catch (e) {
  console.error(`not verified: ${e.code ?? e.name}: ${e.message}`);
  process.exit(1);
}
