// The public REST API (/api/v1) with the bearer token from sessionStorage, in the Authorization header
// (never a cookie, never a URL): a cross-site page cannot make the browser send it.

const KEY = 'lmaas.token';

export const session = {
  get: () => sessionStorage.getItem(KEY),
  set: (token) => sessionStorage.setItem(KEY, token),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

function headers(json) {
  const out = { Accept: 'application/json' };
  const token = session.get();
  if (token) out.Authorization = `Bearer ${token}`;
  if (json) out['Content-Type'] = 'application/json';
  return out;
}

export async function api(method, path, body, signal) {
  const init = { method, headers: headers(body !== undefined), cache: 'no-store', credentials: 'omit', signal };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`/api/v1${path}`, init);
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!response.ok) {
    if (response.status === 401) window.dispatchEvent(new CustomEvent('lmaas:unauthenticated'));
    throw new ApiError(response.status, data);
  }
  return data;
}

// Server-sent events over fetch (EventSource cannot send an Authorization header): yields {event, id, data}.
export async function* events(method, path, body, signal) {
  const init = { method, headers: headers(body !== undefined), cache: 'no-store', credentials: 'omit', signal };
  init.headers.Accept = 'text/event-stream';
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`/api/v1${path}`, init);
  if (!response.ok) {
    let problem = null;
    try { problem = await response.json(); } catch { problem = null; }
    throw new ApiError(response.status, problem);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = { event: 'message', id: '', data: '' };
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') message.event = val;
        else if (field === 'id') message.id = val;
        else if (field === 'data') data.push(val);
      }
      if (!data.length) continue;
      message.data = JSON.parse(data.join('\n'));
      yield message;
    }
  }
}
