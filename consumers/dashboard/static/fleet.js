// The fleet view: every host's convergence against the head of the peers stream, the
// listener and each stage. Fields this page does not know yet are shown as extra columns.
import { ago, chip, fill, formatField, h, humanize, plural, setText, show } from './dom.js';
import { renderTable } from './table.js';

/** True/false when the status says (or lets us tell) whether a host is stale; null: unknown. */
export function isStale(host, now) {
  if (typeof host.stale === 'boolean') return host.stale;
  const interval = Number(host.reconcile_interval);
  if (host.updated_at && interval > 0) return now - host.updated_at > 3 * interval;
  return null;
}

/** A host's state: converged (applied the head, no error, not stale) and its marks. */
export function hostState(host, now) {
  const stale = isStale(host, now);
  const reported = host.updated_at !== null && host.updated_at !== undefined;
  const converged = reported && host.lag_entries === 0 && !host.last_error && stale !== true;
  const chips = [];
  if (!reported) chips.push(chip('no report', 'muted', 'announced an endpoint, never reported'));
  else if (converged) chips.push(chip('converged', 'ok', 'applied the head of the peers stream'));
  else if (host.lag_entries > 0) {
    const n = `${host.lag_entries}${host.lag_capped ? '+' : ''}`;
    chips.push(chip(`behind ${n}`, 'warn', `${n} peers entries not applied yet`));
  }
  if (host.last_error) chips.push(chip('error', 'bad', host.last_error));
  if (stale === true) {
    chips.push(chip('stale', 'bad', `no report for ${ago(now - host.updated_at)}`));
  }
  if (host.fail_closed) {
    chips.push(chip(`fail-closed: ${host.fail_closed}`, 'warn', 'no peers at all on this host'));
  }
  if (host.held) {
    chips.push(chip('held', 'warn', 'keeps its last applied configuration until the pipeline catches up'));
  }
  return { converged, stale, chips };
}

const HOST_KNOWN = [
  'interface', 'mode', 'lag_capped', 'fail_closed', 'updated_at', 'stale', 'held',
  'reconcile_interval', 'lag_seconds', 'addresses',
];

function hostColumns(now) {
  return [
    {
      key: 'node', label: 'Host', header: true,
      cell: (x) => h('span', { class: 'stack' },
        h('a', { href: `#/node/${encodeURIComponent(x.node)}` }, x.node),
        x.addresses ? h('span', { class: 'sub mono', title: 'its interface addresses' }, x.addresses) : null),
    },
    { key: 'state', label: 'State', cell: (x) => h('span', { class: 'chips' }, hostState(x, now).chips) },
    { key: 'endpoint', label: 'Endpoint', className: 'mono' },
    { key: 'applied_position', label: 'Applied', className: 'mono' },
    { key: 'applied_block', label: 'Block', className: 'num', optional: true },
    {
      key: 'lag_entries', label: 'Behind', className: 'num',
      cell: (x) => `${x.lag_entries}${x.lag_capped ? '+' : ''}`,
    },
    {
      key: 'waiting_seconds', label: 'Lag', className: 'num',
      cell: (x) => `${Number(x.waiting_seconds ?? x.lag_seconds ?? 0).toFixed(1)} s`,
    },
    {
      key: 'last_apply', label: 'Last apply', className: 'num',
      cell: (x) => (x.last_apply ? `${ago(now - x.last_apply)} ago` : 'never'),
    },
    {
      key: 'report', label: 'Last report', className: 'num',
      cell: (x) => (x.updated_at ? `${ago(now - x.updated_at)} ago` : 'never'),
    },
    {
      key: 'handshake_latest', label: 'Handshake', className: 'num', optional: true,
      cell: (x) => formatField('handshake_latest', x.handshake_latest, now),
    },
    { key: 'peer_count', label: 'Peers', className: 'num' },
    { key: 'last_error', label: 'Last error', className: 'wrap' },
  ];
}

function card(label, value, kind, detail) {
  return h('div', { class: `card ${kind || ''}` },
    h('span', { class: 'label' }, label),
    h('span', { class: 'value' }, value),
    detail ? h('span', { class: 'detail' }, detail) : null);
}

function facts(dl, pairs) {
  fill(dl, pairs.flatMap(([term, value]) => [h('dt', {}, term), h('dd', {}, value)]));
}

/** Render the whole fleet view from ``/v1/status`` (and ``/v1/nodes``, for what needs attention). */
export function renderFleet(status, nodes) {
  const now = status.generated_at;
  const hosts = status.hosts || [];
  const converged = hosts.filter((x) => hostState(x, now).converged).length;
  const listener = status.listener || {};
  const counts = status.counts || {};
  const current = Array.isArray(status.issues); // counts of now, not totals since genesis
  const named = new Set(current ? status.issues.map((x) => x.node) : []);
  const withoutPeer = (nodes || []).filter((n) => n.member && !n.live).length;
  const pending = counts.pending_allocations || 0;
  const attention = current
    ? status.issues.length + (nodes || []).filter((n) => n.member && !n.live && !named.has(n.node)).length
    : withoutPeer + pending;
  const problems = Array.isArray(status.problems) ? status.problems : null;
  const worst = { critical: 'bad', warning: 'warn', unknown: 'bad', ok: 'ok' };
  fill(document.getElementById('fleet-cards'), [
    problems ? card('Health', status.health || 'ok', worst[status.health] || 'warn',
      problems.length ? problems[0].message : 'no problem found') : null,
    card('Hosts converged', `${converged} / ${hosts.length}`,
      hosts.length && converged === hosts.length ? 'ok' : 'warn',
      status.peers_head ? `peers head ${status.peers_head}` : 'peers stream empty'),
    card('Listener lag', listener.lag_blocks === null || listener.lag_blocks === undefined
      ? 'unknown' : `${listener.lag_blocks} blocks`,
    listener.lag_blocks === 0 ? 'ok' : 'warn',
    `head ${show(listener.chain_head)}, cursor ${show(listener.cursor_block)}`),
    card('Dead letters', String(counts.dead_letters || 0), counts.dead_letters ? 'bad' : 'ok',
      'entries a stage set aside'),
    card('Needs attention', String(attention), attention ? 'warn' : 'ok',
      `${plural(withoutPeer, 'member')} without a peer, ${pending} waiting for an address; `
      + `${plural(counts.conflicts || 0, 'conflict')}, ${plural(counts.anomalies || 0, 'anomaly', 'anomalies')} `
      + `${current ? 'now' : 'recorded'}`),
  ]);
  setText(document.getElementById('hosts-head'), status.peers_head
    ? `A host has converged when it has applied ${status.peers_head}, the newest entry of the peers stream.`
    : 'The peers stream is empty.');
  renderTable(document.getElementById('hosts'), hosts, hostColumns(now), (x) => x.node, HOST_KNOWN, true, now);
  renderProblems(problems, status.health);

  const lease = listener.lease_holder
    ? `${listener.lease_holder}${listener.lease_fence ? ` (fence ${listener.lease_fence})` : ''}`
    : 'nobody';
  const known = new Set(['cursor_block', 'cursor_hash', 'last_entry', 'chain_head', 'lag_blocks',
    'lease_holder', 'lease_fence', 'lease_ttl_seconds', 'events', 'dead_letters']);
  facts(document.getElementById('listener'), [
    ['Cursor block', show(listener.cursor_block)],
    ['Chain head', listener.chain_head === null ? 'unknown (RPC node not answering)' : show(listener.chain_head)],
    ['Lag', listener.lag_blocks === null ? 'unknown' : `${listener.lag_blocks} blocks`],
    ['Lease holder', lease],
    ['Events', show(listener.events)],
    ['Dead letters', show(listener.dead_letters)],
    ...Object.entries(listener).filter(([k]) => !known.has(k))
      .map(([k, v]) => [humanize(k), formatField(k, v, now)]),
  ]);
  renderTable(document.getElementById('stages'), status.stages || [], [
    { key: 'name', label: 'Stage', header: true },
    { key: 'position', label: 'Position', className: 'mono' },
    {
      key: 'lag_entries', label: 'Lag', className: 'num',
      cell: (x) => `${x.lag_entries}${x.lag_capped ? '+' : ''} entries`,
    },
    {
      key: 'dead_letters', label: 'Dead letters', className: 'num',
      cell: (x) => (x.dead_letters ? chip(String(x.dead_letters), 'bad') : '0'),
    },
    {
      key: 'waiting_seconds', label: 'Waiting', className: 'num', optional: true,
      cell: (x) => formatField('waiting_seconds', x.waiting_seconds, now),
    },
  ], (x) => x.name, ['lag_capped'], true, now);
  return { converged, hosts: hosts.length };
}

/** The problems ``wgchain status`` names (when the status carries them), worst first. */
function renderProblems(problems, health) {
  const panel = document.getElementById('problems-panel');
  panel.hidden = !problems || !problems.length; // none: the Health card says "ok"
  if (panel.hidden) return;
  const kind = { critical: 'bad', warning: 'warn', unknown: 'bad' };
  setText(document.getElementById('problems-note'), problems.length
    ? `${plural(problems.length, 'problem')} (${health}).`
    : 'No problem: every check of wgchain status passes.');
  fill(document.getElementById('problems'), problems.map((p) => h('li', {},
    chip(p.severity, kind[p.severity] || 'warn'), ' ',
    h('span', { class: 'subject' }, p.subject), ' ', p.message)));
}
