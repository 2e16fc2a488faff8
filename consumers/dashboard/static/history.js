// A node's story: its facts and every log entry that concerns it (wgchain audit history).
import { chip, fill, h, plural, setText, shorten, show } from './dom.js';
import { hostState } from './fleet.js';
import { REASONS } from './members.js';
import { renderTable } from './table.js';

function value(v) {
  if (typeof v === 'string' && v.length > 24) return h('code', { title: v }, shorten(v));
  if (v && typeof v === 'object') {
    return h('ul', { class: 'kv' }, Object.entries(v).map(([k, x]) => h('li', {}, h('span', { class: 'k' }, k), ' ', value(x))));
  }
  return h('span', {}, show(v));
}

function pairs(obj) {
  return h('ul', { class: 'kv' },
    Object.entries(obj || {}).map(([k, v]) => h('li', {}, h('span', { class: 'k' }, k), ' ', value(v))));
}

function stateCell(state) {
  const live = state.live
    ? chip('live', 'ok')
    : chip(state.reason || 'not live', 'muted', REASONS[state.reason] || state.reason);
  const rest = { ...state };
  delete rest.live;
  delete rest.reason;
  return h('div', {}, live, pairs(rest));
}

/** Render the node view from ``/v1/nodes/{node}`` and its history. */
export function renderNode(detail, history, status) {
  setText(document.getElementById('node-title'), detail.node);
  const host = detail.host;
  const now = status ? status.generated_at : Date.now() / 1000;
  const facts = [
    ['Status', detail.live ? chip('live', 'ok')
      : chip(detail.member ? detail.reason : 'revoked', detail.member ? 'warn' : 'muted', REASONS[detail.reason])],
    ['Address', [detail.ipv4, detail.ipv6].filter(Boolean).join(' ') || '—'],
    ['Key', detail.public_key ? h('code', { class: 'break' }, detail.public_key) : '—'],
    ['Owner', detail.owner ? h('code', { class: 'break' }, detail.owner) : '—'],
    ['Token', detail.token_id === null ? '—' : `#${detail.token_id}`],
    ['Live since block', show(detail.since_block)],
    ['Endpoint', show(detail.endpoint)],
    ['Host', host ? h('span', { class: 'chips' }, hostState(host, now).chips) : 'no agent'],
  ];
  fill(document.getElementById('node-facts'),
    facts.flatMap(([t, d]) => [h('dt', {}, t), h('dd', {}, d)]));
  const folded = `folded from ${plural(history.events, 'log entry', 'log entries')}`;
  setText(document.getElementById('history-note'), history.total > history.rows.length
    ? `The newest ${history.rows.length} of ${history.total} entries, ${folded}.`
    : `${plural(history.total, 'entry', 'entries')}, ${folded}.`);
  renderTable(document.getElementById('history'), history.rows, [
    { key: 'block', label: 'Block', header: true, className: 'num', cell: (r) => (r.block < 0 ? '?' : String(r.block)) },
    { key: 'time', label: 'Time (UTC)', className: 'mono', cell: (r) => r.time || '—' },
    { key: 'tx', label: 'Tx', cell: (r) => (r.tx ? h('code', { title: r.tx }, shorten(r.tx, 10, 6)) : '—') },
    {
      key: 'event', label: 'Event',
      cell: (r) => h('span', { class: 'chips' }, chip(r.event, r.retracted ? 'muted' : 'info'),
        r.retracted ? chip('retracted (not applied)', 'bad') : null),
    },
    { key: 'fields', label: 'Details', cell: (r) => pairs(r.fields) },
    { key: 'state', label: 'Resulting state', cell: (r) => stateCell(r.state) },
  ], (r) => r.entry_id, ['entry_id', 'log_index', 'retracted']);
}
