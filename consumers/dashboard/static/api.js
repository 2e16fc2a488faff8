// The JSON API, with the bearer token kept in this tab's sessionStorage (never in a URL).
// Paths are relative to the page, so the dashboard also works behind a path prefix.

const TOKEN_KEY = 'wgchain.token';

/** Raised when the API refuses the token (401): the page asks for one. */
export class AuthError extends Error {}

/** Raised for any other failed request (network down, 4xx, 5xx). */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** Whether this API wants a token (the server says so in a meta tag of the page). */
export function authRequired() {
  const meta = document.querySelector('meta[name="wgchain-auth"]');
  return meta !== null && meta.content === 'bearer';
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** GET a JSON document; AuthError on 401, ApiError on anything else that is not 2xx. */
export async function getJSON(path, params = {}) {
  if (authRequired() && !token()) throw new AuthError('a token is required');
  const query = new URLSearchParams(params).toString();
  const headers = { Accept: 'application/json' };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let response;
  try {
    response = await fetch(query ? `${path}?${query}` : path, {
      headers,
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (err) {
    throw new ApiError(`the API does not answer (${err.message})`, 0);
  }
  if (response.status === 401) throw new AuthError('the token was refused');
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const reason = body && typeof body.error === 'string' ? body.error : response.statusText;
    throw new ApiError(`${response.status}: ${reason}`, response.status);
  }
  return body;
}

/** Every node of ``/v1/nodes``, following its pages. */
export async function allNodes() {
  const nodes = [];
  let after = '';
  for (;;) {
    const page = await getJSON('v1/nodes', after ? { after, limit: 10000 } : { limit: 10000 });
    nodes.push(...page.nodes);
    if (!page.next) return { nodes, position: page.position };
    after = page.next;
  }
}
