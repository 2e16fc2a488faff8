// Small DOM helpers. Every string from the API goes through textContent or an attribute:
// chain data is hostile until proven otherwise, and nothing here ever parses it as HTML.

/** Create an element: h('a', {href: '#/x', class: 'y'}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const ns = attrs.svg ? 'http://www.w3.org/2000/svg' : null;
  const el = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'svg' || value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Replace the children of ``el``. */
export function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

/** Set text only when it changed (keeps selection and screen readers quiet). */
export function setText(el, value) {
  const text = value === null || value === undefined ? '' : String(value);
  if (el.textContent !== text) el.textContent = text;
}

/**
 * Keep the rows of ``tbody`` equal to ``items``, keyed by ``key(item)``: rows are
 * created once (``create``), updated in place (``update``), moved and removed, so a
 * focused link or a selection in a row survives a refresh.
 */
export function syncRows(tbody, items, key, create, update) {
  const old = new Map();
  for (const row of tbody.rows) old.set(row.dataset.key, row);
  let cursor = tbody.firstElementChild;
  for (const item of items) {
    const k = String(key(item));
    let row = old.get(k);
    if (row) old.delete(k);
    else {
      row = create(item);
      row.dataset.key = k;
    }
    update(row, item);
    if (row !== cursor) tbody.insertBefore(row, cursor);
    else cursor = cursor.nextElementSibling;
  }
  for (const row of old.values()) row.remove();
}

/** A status chip: text first (colour is only a hint). */
export function chip(label, kind, title) {
  return h('span', { class: `chip ${kind}`, title }, label);
}

/** "3 s", "4 min", "2 h", "5 d" for a number of seconds (null: "never"). */
export function ago(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return 'never';
  const s = Math.max(0, seconds);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

/** The first and last characters of a long string: "xTIBA5rb…p8Dg=". */
export function shorten(text, head = 8, tail = 5) {
  if (!text) return '';
  return text.length <= head + tail + 1 ? text : `${text.slice(0, head)}…${text.slice(-tail)}`;
}

/** A value for a table cell: numbers and booleans as text, objects as compact JSON. */
export function show(value) {
  if (value === null || value === undefined || value === '') return '—';
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

/** Fields holding a unix time (shown as "12 s ago"). */
const TIMES = new Set(['handshake_latest', 'polled_at', 'updated_at', 'last_apply', 'generated_at']);

/** A field's value for a person, by its name: times as "… ago", ``*_seconds`` in seconds. */
export function formatField(name, value, now) {
  if (typeof value === 'number' && (TIMES.has(name) || name.endsWith('_at'))) {
    if (value === 0) return 'none';
    return now ? `${ago(now - value)} ago` : new Date(value * 1000).toISOString();
  }
  if (typeof value === 'number' && name.endsWith('_seconds')) return `${value.toFixed(1)} s`;
  if (typeof value === 'number' && name.endsWith('_interval')) return `${value} s`;
  return show(value);
}

/** "1 conflict", "2 conflicts". */
export function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}

/** "lag_entries" -> "Lag entries". */
export function humanize(name) {
  const words = String(name).replace(/_/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** Copy ``text``: the clipboard where the page may use it (https, localhost), else a prompt
 * holding the whole text, selected, for Ctrl+C. */
export async function copy(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return 'Copied.';
  }
  window.prompt('Copy it with Ctrl+C:', text);
  return '';
}

/** Make ``children`` the children of ``parent`` in order, moving only what is out of place
 * (a node that stays keeps its focus). */
export function arrange(parent, children) {
  const wanted = children.flat().filter((c) => c !== null && c !== undefined);
  wanted.forEach((child, i) => {
    if (parent.children[i] !== child) parent.insertBefore(child, parent.children[i] || null);
  });
  while (parent.children.length > wanted.length) parent.lastElementChild.remove();
}
