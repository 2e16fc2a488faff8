// The members view: every node with its address, key, owner, token, whether it is live
// (or why not) and its host's state; a search box and a filter; what needs attention.
import { arrange, chip, h, humanize, plural, setText, shorten, show } from './dom.js';
import { hostState } from './fleet.js';
import { renderTable } from './table.js';

/** Why a member has no peer, in words (unknown reasons are shown as they are). */
export const REASONS = {
  'no-key': 'its owner has no WireGuard key on chain',
  'invalid-key': "its owner's key on chain is not a valid WireGuard key",
  'key-conflict': 'another live member uses the same key; the lowest token id keeps it',
  'node-conflict': 'another active token names this node; the lowest token id keeps it',
  revoked: 'no active token names it any more',
  transferred: "its token moved to an owner whose key is not this node's",
  expired: 'its pass has expired',
};

function statusChip(node) {
  if (node.live && !node.ipv4) return chip('live, no address yet', 'warn', 'waiting for an address from the pool');
  if (node.live) return chip('live', 'ok', 'has a WireGuard peer on every host');
  const why = REASONS[node.reason] || node.reason || 'not live';
  return chip(node.member ? node.reason || 'not live' : 'revoked', node.member ? 'warn' : 'muted', why);
}

function hostCell(host, now) {
  if (!host) return h('span', { class: 'muted' }, 'no agent');
  const { chips } = hostState(host, now);
  return h('span', { class: 'chips' }, chips);
}

function keyCell(node) {
  if (!node.public_key) return h('span', { class: 'muted' }, '—');
  return h('span', { class: 'key' },
    h('code', { title: node.public_key }, shorten(node.public_key)),
    h('button', {
      type: 'button', class: 'copy', 'data-copy': node.public_key,
      'aria-label': `Copy the key of ${node.node}`, title: 'Copy the full key',
    }, 'Copy'));
}

/** Does ``node`` match the search text (node, address, key, owner, token, reason)? */
function matches(node, needle) {
  if (!needle) return true;
  const hay = [node.node, node.ipv4, node.ipv6, node.public_key, node.owner,
    node.token_id === null ? '' : `#${node.token_id} ${node.token_id}`, node.reason];
  return hay.some((v) => v && String(v).toLowerCase().includes(needle));
}

const SHOW = {
  members: (n) => n.member,
  live: (n) => n.live,
  'not-live': (n) => !n.live,
  all: () => true,
};

/** Render the members table, the counts line and the attention lists. */
export function renderMembers(nodes, status) {
  const now = status ? status.generated_at : Date.now() / 1000;
  const hosts = new Map((status ? status.hosts : []).map((x) => [x.node, x]));
  const needle = document.getElementById('q').value.trim().toLowerCase();
  const show = SHOW[document.getElementById('show').value] || SHOW.members;
  const shown = nodes.filter((n) => show(n) && matches(n, needle));
  const members = nodes.filter((n) => n.member).length;
  const live = nodes.filter((n) => n.live).length;
  setText(document.getElementById('members-count'),
    `Showing ${shown.length} of ${nodes.length} nodes (${members} members, ${live} live).`);
  renderTable(document.getElementById('members'), shown, [
    {
      key: 'node', label: 'Node', header: true,
      cell: (n) => h('a', { href: `#/node/${encodeURIComponent(n.node)}`, title: 'Its story' }, n.node),
    },
    { key: 'live', label: 'Status', cell: statusChip },
    {
      key: 'ipv4', label: 'Address', className: 'mono',
      cell: (n) => [n.ipv4, n.ipv6].filter(Boolean).join(' ') || '—',
    },
    { key: 'public_key', label: 'Key', cell: keyCell },
    {
      key: 'owner', label: 'Owner',
      cell: (n) => (n.owner ? h('code', { title: n.owner }, shorten(n.owner, 6, 4)) : '—'),
    },
    { key: 'token_id', label: 'Token', className: 'num', cell: (n) => (n.token_id === null ? '—' : `#${n.token_id}`) },
    { key: 'host', label: 'Host', cell: (n) => hostCell(hosts.get(n.node), now) },
  ], (n) => n.node, ['member', 'reason', 'ipv6']);
  renderAttention(nodes, status);
}

/** Lists of objects in the status document (other than hosts and stages), by name. */
function statusLists(status) {
  const lists = [];
  const visit = (obj, prefix) => {
    for (const [name, value] of Object.entries(obj || {})) {
      if (['hosts', 'stages', 'issues', 'problems'].includes(name) && !prefix) continue;
      if (Array.isArray(value) && value.every((v) => v && typeof v === 'object')) {
        lists.push([prefix + name, value]);
      } else if (value && typeof value === 'object' && !Array.isArray(value) && !prefix
        && name !== 'listener') {
        visit(value, `${name} `);
      }
    }
  };
  visit(status, '');
  return lists;
}

const boxes = new Map();

/** A titled table of ``items`` (kept across refreshes, so focus in it survives). */
function section(id, title, items, columns, key) {
  let box = boxes.get(id);
  if (!box) {
    const table = h('table', { class: 'cards-on-phone', 'data-empty': 'None.' }, h('thead'), h('tbody'));
    box = h('section', { class: 'attention', 'aria-labelledby': id },
      h('h3', { id }), h('div', { class: 'table-wrap' }, table));
    boxes.set(id, box);
  }
  setText(box.querySelector('h3'), `${title} (${items.length})`);
  renderTable(box.querySelector('table'), items, columns, key, [], false);
  return box;
}

function renderAttention(nodes, status) {
  const out = [];
  const notLive = nodes.filter((n) => n.member && !n.live);
  out.push(section('att-not-live', 'Members without a peer', notLive, [
    {
      key: 'node', label: 'Node', header: true,
      cell: (n) => h('a', { href: `#/node/${encodeURIComponent(n.node)}` }, n.node),
    },
    { key: 'reason', label: 'Reason', cell: (n) => chip(n.reason || 'not live', 'warn') },
    { key: 'cause', label: 'Cause', className: 'wrap', cell: (n) => REASONS[n.reason] || n.reason },
    { key: 'token_id', label: 'Token', className: 'num', cell: (n) => `#${n.token_id}` },
  ], (n) => n.node));
  const pending = nodes.filter((n) => n.live && !n.ipv4);
  // with the current issues in the status, its pending allocations (with their cause) say it
  if (!(status && Array.isArray(status.issues))) out.push(section('att-pending', 'Waiting for an address', pending, [
    { key: 'node', label: 'Node', header: true },
    { key: 'cause', label: 'Cause', cell: () => 'no free address in the pool yet (or ipam behind)' },
  ], (n) => n.node));
  if (status && Array.isArray(status.issues)) out.push(issuesSection(status.issues));
  let i = 0;
  for (const [name, items] of status ? statusLists(status) : []) {
    i += 1;
    const columns = [...new Set(items.flatMap((x) => Object.keys(x)))].map((k) => ({
      key: k, label: humanize(k), cell: (x) => show(x[k]),
    }));
    out.push(section(`att-list-${i}`, humanize(name), items, columns, (x) => JSON.stringify(x)));
  }
  const counts = (status && status.counts) || {};
  const recorded = boxes.get('recorded') || h('p', { class: 'hint' });
  boxes.set('recorded', recorded);
  const conflicts = plural(counts.conflicts || 0, 'conflict');
  const anomalies = plural(counts.anomalies || 0, 'anomaly', 'anomalies');
  const now = `${plural(counts.pending_allocations || 0, 'live member')} waiting for an address, `
    + `${plural(counts.dead_letters || 0, 'dead letter')}.`;
  setText(recorded, status && Array.isArray(status.issues)
    ? `Now: ${conflicts}, ${anomalies} (strings from the chain that were refused), ${now}`
    : `Recorded in the registry stream since the start: ${conflicts}, ${anomalies} (strings `
      + `from the chain that were refused). Now: ${now}`);
  arrange(document.getElementById('attention'), [recorded, ...out]);
}

const VALID_NODE = /^[A-Za-z0-9._-]{1,64}$/;
const ISSUE_KINDS = { conflict: 'warn', anomaly: 'bad', pending: 'warn' };

/** The current conflicts, anomalies and pending allocations, each with its cause. */
function issuesSection(issues) {
  return section('att-issues', 'Conflicts, anomalies and pending allocations', issues, [
    { key: 'kind', label: 'Kind', cell: (x) => chip(x.kind, ISSUE_KINDS[x.kind] || 'warn') },
    { key: 'reason', label: 'Reason' },
    {
      key: 'node', label: 'Node',
      cell: (x) => (VALID_NODE.test(x.node)
        ? h('a', { href: `#/node/${encodeURIComponent(x.node)}` }, x.node)
        : h('code', { title: 'not a valid node id: shown as text' }, x.node)),
    },
    {
      key: 'token_id', label: 'Token', className: 'num',
      cell: (x) => (x.token_id === null || x.token_id === undefined ? '—' : `#${x.token_id}`
        + (x.winner_token_id ? ` (#${x.winner_token_id} keeps it)` : '')),
    },
    {
      key: 'cause', label: 'Cause',
      cell: (x) => (x.cause ? h('code', { title: 'hash of the transaction whose contract log caused it' },
        `${x.cause}${x.block ? ` (block ${x.block})` : ''}`) : '—'),
    },
    { key: 'detail', label: 'Detail', className: 'wrap' },
  ], (x) => `${x.kind}|${x.reason}|${x.node}|${x.token_id}`);
}
