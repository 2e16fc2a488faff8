// The topology, drawn as SVG: live members on a ring (spokes), hubs in the middle, a line per
// tunnel. A full mesh of many members draws only the focused member's tunnels (every member
// has one to every other: the lines would only hide the names). Beyond the API's draw limit
// the figure is a summary. Every member is a link (keyboard: Tab) to its story.
import { fill, h, setText } from './dom.js';
import { hostState } from './fleet.js';

const SVG = { svg: true };
/** Members up to which a mesh draws every tunnel. */
const ALL_MESH_LINES = 16;
/** Pixels between two neighbours on the ring (room for a 12 px label). */
const SPACING = 15;

function s(tag, attrs = {}, ...children) {
  return h(tag, { ...SVG, ...attrs }, ...children);
}

function stateOf(node, hosts, now) {
  const host = hosts.get(node);
  if (!host) return ['none', 'no agent'];
  const st = hostState(host, now);
  if (host.last_error || st.stale === true) return ['bad', host.last_error ? 'host error' : 'host stale'];
  if (!st.converged) return ['warn', 'host behind'];
  return ['ok', 'host converged'];
}

/** Positions: hubs in the middle, the others on a ring large enough for their labels. */
function layout(members) {
  const hubs = members.filter((m) => m.hub);
  const ring = members.filter((m) => !m.hub);
  const longest = Math.max(4, ...members.map((m) => m.node.length));
  const radius = Math.max(170, (SPACING * ring.length) / (2 * Math.PI));
  const margin = 30 + longest * 7.2;
  const size = 2 * (radius + margin);
  const c = size / 2;
  const at = new Map();
  ring.forEach((m, i) => {
    const angle = (2 * Math.PI * i) / ring.length - Math.PI / 2;
    at.set(m.node, { x: c + radius * Math.cos(angle), y: c + radius * Math.sin(angle), angle });
  });
  const hubRadius = hubs.length > 1 ? Math.min(radius / 2.5, 30 + 18 * hubs.length) : 0;
  hubs.forEach((m, i) => {
    const angle = (2 * Math.PI * i) / hubs.length - Math.PI / 2;
    at.set(m.node, { x: c + hubRadius * Math.cos(angle), y: c + hubRadius * Math.sin(angle), angle, hub: true });
  });
  return { at, size, c, radius, ring: ring.length };
}

/** The tunnels of the topology among ``members`` (pairs of node ids). */
function tunnels(kind, members) {
  const pairs = [];
  const hubs = members.filter((m) => m.hub).map((m) => m.node);
  for (let i = 0; i < members.length; i += 1) {
    for (let j = i + 1; j < members.length; j += 1) {
      const a = members[i].node;
      const b = members[j].node;
      if (kind !== 'hub' || hubs.includes(a) || hubs.includes(b)) pairs.push([a, b]);
    }
  }
  return pairs;
}

function line(p, q, cls) {
  return s('line', { x1: p.x.toFixed(1), y1: p.y.toFixed(1), x2: q.x.toFixed(1), y2: q.y.toFixed(1), class: cls });
}

function label(m, p, many) {
  const r = m.hub ? 14 : 7;
  if (m.hub || !many) {
    return s('text', { x: p.x, y: p.y + r + 16, 'text-anchor': 'middle', class: m.hub ? 'hub-label' : '' }, m.node);
  }
  let deg = (p.angle * 180) / Math.PI;
  const left = deg > 90 && deg < 270;
  if (left) deg -= 180;
  return s('text', {
    x: p.x, y: p.y, dy: '0.35em', 'text-anchor': left ? 'end' : 'start',
    transform: `rotate(${deg.toFixed(2)} ${p.x.toFixed(1)} ${p.y.toFixed(1)}) translate(${left ? -12 : 12} 0)`,
  }, m.node);
}

let drawn = '';

/** Draw ``topo`` (from ``/v1/topology``), nodes coloured by their host's state in ``status``. */
export function renderTopology(topo, status) {
  const now = status ? status.generated_at : Date.now() / 1000;
  const hosts = new Map((status ? status.hosts : []).map((x) => [x.node, x]));
  const kind = topo.topology;
  const hubsText = topo.hubs.length
    ? ` Hubs: ${topo.hubs.map((x) => (topo.live_hubs.includes(x) ? x : `${x} (not live)`)).join(', ')}.`
    : '';
  const what = kind === 'hub'
    ? 'hubs peer with everyone, spokes with the hubs only'
    : 'every member peers with every other';
  setText(document.getElementById('topo-summary'),
    `${kind === 'hub' ? 'Hub' : 'Mesh'} topology (${what}): ${topo.live} live members, `
    + `${topo.tunnels} tunnels.${hubsText}`);
  const svg = document.getElementById('topo');
  const members = topo.members;
  const states = members.map((m) => stateOf(m.node, hosts, now));
  const signature = JSON.stringify([kind, topo.live, topo.live_hubs, members, states]);
  if (signature === drawn) return;
  drawn = signature;
  const note = document.getElementById('topo-note');
  if (topo.live > topo.draw_limit || (!members.length && topo.live)) {
    setText(note, `More than ${topo.draw_limit} live members: a summary instead of every node `
      + '(the Members view lists them one by one).');
    drawSummary(svg, topo);
    return;
  }
  setText(note, kind === 'mesh' && members.length > ALL_MESH_LINES
    ? 'Move to a member (mouse or Tab) to draw its tunnels.'
    : 'Each line is a WireGuard tunnel. Move to a member (mouse or Tab) to highlight it.');
  const { at, size, c, radius, ring } = layout(members);
  svg.setAttribute('viewBox', `0 0 ${size.toFixed(0)} ${size.toFixed(0)}`);
  svg.setAttribute('width', size.toFixed(0));
  svg.style.setProperty('--size', `${size.toFixed(0)}px`);
  const pairs = tunnels(kind, members);
  svg.classList.toggle('many', members.length > 60);
  const showAll = kind === 'hub' || members.length <= ALL_MESH_LINES;
  const edges = s('g', { class: 'edges', 'aria-hidden': 'true' },
    showAll ? pairs.map(([a, b]) => line(at.get(a), at.get(b), 'edge')) : []);
  const focus = s('g', { class: 'focus-edges', 'aria-hidden': 'true' });
  const many = ring > 12;
  const nodes = s('g', { class: 'nodes' }, members.map((m, i) => {
    const p = at.get(m.node);
    const [cls, words] = states[i];
    const peers = pairs.filter(([a, b]) => a === m.node || b === m.node).length;
    const name = `${m.node}${m.hub ? ', hub' : ''}, ${m.ipv4 || 'no address'}, ${words}, ${peers} tunnels`;
    return s('a', {
      href: `#/node/${encodeURIComponent(m.node)}`, class: `node ${cls}${m.hub ? ' hub' : ''}`,
      'aria-label': name, 'data-node': m.node,
    },
    s('title', {}, name),
    m.hub ? s('circle', { cx: p.x, cy: p.y, r: 20, class: 'hub-ring' }) : null,
    s('circle', { cx: p.x, cy: p.y, r: m.hub ? 14 : 7, class: 'dot' }),
    label(m, p, many));
  }));
  const ringLine = ring ? s('circle', { cx: c, cy: c, r: radius, class: 'ring', 'aria-hidden': 'true' }) : null;
  const empty = members.length ? null : s('text', { x: c, y: c, 'text-anchor': 'middle', class: 'hint' }, 'No live member yet.');
  fill(svg, ringLine, edges, focus, nodes, empty);
  const info = document.getElementById('topo-focus');
  const highlight = (node) => {
    if (!node) {
      fill(focus);
      setText(info, '');
      return;
    }
    fill(focus, pairs.filter(([a, b]) => a === node || b === node)
      .map(([a, b]) => line(at.get(a), at.get(b), 'edge hot')));
    const el = nodes.querySelector(`[data-node="${CSS.escape(node)}"]`);
    setText(info, el ? el.getAttribute('aria-label') : '');
  };
  nodes.addEventListener('focusin', (e) => highlight(e.target.closest('a')?.dataset.node));
  nodes.addEventListener('mouseover', (e) => highlight(e.target.closest('a')?.dataset.node));
  nodes.addEventListener('focusout', () => highlight(null));
  nodes.addEventListener('mouseleave', () => highlight(null));
}

/** Too many members: the hubs, and one ring that stands for all the others. */
function drawSummary(svg, topo) {
  const [width, height, c, r] = [520, 470, 260, 170];
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('width', width);
  svg.style.setProperty('--size', `${width}px`);
  svg.classList.remove('many');
  const cy = 20 + r;
  const spokes = topo.live - topo.live_hubs.length;
  const hubs = topo.live_hubs.map((x, i) => {
    const a = (2 * Math.PI * i) / topo.live_hubs.length - Math.PI / 2;
    const d = topo.live_hubs.length > 1 ? 60 : 0;
    const p = { x: c + d * Math.cos(a), y: cy + d * Math.sin(a) };
    return s('g', { class: 'node hub none' },
      s('circle', { cx: p.x, cy: p.y, r: 20, class: 'hub-ring' }),
      s('circle', { cx: p.x, cy: p.y, r: 14, class: 'dot' }),
      s('text', { x: p.x, y: p.y + 38, 'text-anchor': 'middle', class: 'hub-label' }, x));
  });
  const text = topo.topology === 'hub'
    ? `${spokes} spokes, each with a tunnel to every hub`
    : `${topo.live} members, each with a tunnel to every other`;
  fill(svg,
    s('circle', { cx: c, cy, r, class: 'ring summary' }),
    s('text', { x: c, y: cy + r + 40, 'text-anchor': 'middle', class: 'summary-label' }, text),
    s('text', { x: c, y: cy + r + 64, 'text-anchor': 'middle', class: 'hint' }, `${topo.tunnels} tunnels`),
    hubs);
}
