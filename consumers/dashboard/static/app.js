// The dashboard: a token prompt when the API wants one, three views and a node's story,
// refreshed by polling the JSON API every second (fetch with the Authorization header).
import { allNodes, ApiError, AuthError, authRequired, getJSON, setToken, token } from './api.js';
import { copy, setText, shorten } from './dom.js';
import { renderFleet } from './fleet.js';
import { renderNode } from './history.js';
import { renderMembers } from './members.js';
import { renderTopology } from './topology.js';

/** Milliseconds between two refreshes: a change shows within about this plus one request. */
const REFRESH_MS = 1000;
/** Milliseconds between two reads of a node's history (each folds the whole log). */
const HISTORY_MS = 5000;

const state = {
  status: null,
  nodes: null,
  nodesMark: '',
  topo: null,
  topoMark: '',
  node: null,
  nodeMark: '',
  historyAt: 0,
  timer: 0,
  busy: false,
};

function route() {
  const hash = decodeURIComponent(window.location.hash.replace(/^#\/?/, ''));
  if (hash.startsWith('node/')) return { view: 'node', node: hash.slice(5) };
  return { view: ['fleet', 'members', 'topology'].includes(hash) ? hash : 'fleet' };
}

function showView(view) {
  for (const section of document.querySelectorAll('main > section')) {
    section.hidden = section.dataset.view !== view;
  }
  for (const link of document.querySelectorAll('nav.tabs a')) {
    if (link.dataset.view === view || (view === 'node' && link.dataset.view === 'members')) {
      link.setAttribute('aria-current', 'page');
    } else link.removeAttribute('aria-current');
  }
  document.body.dataset.view = view;
}

function connection(text, kind) {
  const el = document.getElementById('conn');
  setText(el, text);
  el.className = `conn ${kind}`;
}

function askForToken(message) {
  const dialog = document.getElementById('login');
  setText(document.getElementById('login-error'), message || '');
  document.getElementById('signout').hidden = true;
  connection('signed out', 'muted');
  if (!dialog.open) dialog.showModal();
  document.getElementById('token').focus();
}

/** One refresh: the status always; nodes, topology and a node's story when they changed. */
async function refresh() {
  if (state.busy) return;
  state.busy = true;
  const { view, node } = route();
  try {
    const status = await getJSON('v1/status');
    state.status = status;
    const mark = (status.stages || []).map((x) => x.position).join('|');
    if (view === 'members' || view === 'fleet' || !state.nodes) {
      if (mark !== state.nodesMark || !state.nodes) {
        state.nodes = (await allNodes()).nodes;
        state.nodesMark = mark;
      }
    }
    if (view === 'topology' && (mark !== state.topoMark || !state.topo)) {
      state.topo = await getJSON('v1/topology');
      state.topoMark = mark;
    }
    if (view === 'node' && (state.node?.detail.node !== node || mark !== state.nodeMark)) {
      const other = state.node?.detail.node !== node;
      const path = `v1/nodes/${encodeURIComponent(node)}`;
      const detail = await getJSON(path);
      // the history folds the whole log: asked again at most every HISTORY_MS
      const due = other || performance.now() - state.historyAt >= HISTORY_MS;
      const history = due ? await getJSON(`${path}/history`) : state.node.history;
      state.node = { detail, history };
      if (due) {
        state.historyAt = performance.now();
        state.nodeMark = mark; // taken with a fresh history only: a held-back change comes later
      }
    }
    render();
    document.getElementById('signout').hidden = !authRequired();
    const when = new Date(status.generated_at * 1000).toLocaleTimeString();
    connection(`live · updated ${when}`, 'ok');
  } catch (err) {
    if (err instanceof AuthError) {
      const refused = Boolean(token());
      setToken('');
      askForToken(refused ? 'That token was refused. Try again.' : '');
      return;
    }
    if (err instanceof ApiError && err.status === 404 && view === 'node') {
      state.node = null;
      render(err.message);
    }
    connection(err instanceof ApiError ? `unavailable: ${err.message}; retrying` : String(err), 'bad');
  } finally {
    state.busy = false;
  }
}

function render(problem) {
  const { view } = route();
  showView(view);
  if (!state.status) return;
  const network = state.status.network.replace(/^\{(.*)\}$/, '$1');
  const [chain, contract] = network.split(':');
  const tag = document.getElementById('network');
  setText(tag, contract ? `chain ${chain} · ${shorten(contract, 6, 4)}` : network);
  tag.title = `Network ${network}`;
  if (view === 'fleet') renderFleet(state.status, state.nodes);
  if (view === 'members' && state.nodes) renderMembers(state.nodes, state.status);
  if (view === 'topology' && state.topo) renderTopology(state.topo, state.status);
  if (view === 'node') {
    setText(document.getElementById('node-problem'), problem || '');
    if (state.node) renderNode(state.node.detail, state.node.history, state.status);
  }
}

function loop() {
  clearTimeout(state.timer);
  if (document.getElementById('login').open || document.hidden) return;
  const started = performance.now();
  refresh().finally(() => {
    if (document.getElementById('login').open || document.hidden) return;
    state.timer = setTimeout(loop, Math.max(50, REFRESH_MS - (performance.now() - started)));
  });
}

function start() {
  document.getElementById('login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const value = document.getElementById('token').value.trim();
    if (!value) return;
    setToken(value);
    document.getElementById('token').value = '';
    document.getElementById('login').close();
    loop();
  });
  document.getElementById('login').addEventListener('cancel', (event) => event.preventDefault());
  document.getElementById('signout').addEventListener('click', () => {
    setToken('');
    askForToken('');
  });
  document.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-copy]');
    if (!button) return;
    try {
      const how = await copy(button.dataset.copy);
      setText(document.getElementById('copied'), how);
    } catch {
      setText(document.getElementById('copied'), 'could not copy');
    }
  });
  for (const id of ['q', 'show']) {
    document.getElementById(id).addEventListener('input', () => render());
  }
  document.getElementById('member-filters').addEventListener('submit', (e) => e.preventDefault());
  window.addEventListener('hashchange', () => {
    render();
    loop();
    const { view } = route();
    const heading = document.querySelector(`main > section[data-view="${view}"] h1`);
    if (heading) heading.focus({ preventScroll: false });
  });
  document.addEventListener('visibilitychange', () => loop());
  showView(route().view);
  if (authRequired() && !token()) askForToken('');
  else loop();
}

start();
