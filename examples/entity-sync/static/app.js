// Entity sync page: two views with different filters, and a "device" that can go offline and
// that resumes from its user's durable cursor. A client holds one subscription per channel, so
// each of them has its own connection.
import { applyPatch } from './patch.js';

const CHANNEL = 'sync:entities';
const $ = (selector, root = document) => root.querySelector(selector);
const wsUrl = `ws://${location.host}/connection/websocket`;

function tokenFor(user) {
  return async () => {
    const response = await fetch(`/app/token?user=${user}`);
    if (!response.ok) throw new Error(`token: ${response.status} ${await response.text()}`);
    return (await response.json()).token;
  };
}

function showState(element, state) { element.textContent = state; element.dataset.state = state; }

async function api(method, path, body) {
  const response = await fetch(path, { method, headers: { 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });
  const answer = await response.json();
  $('#api-result').textContent = response.ok ? `${method} ${path}: offset ${answer.offset}` : `${method} ${path}: ${answer.error}`;
  return answer;
}

// --- The two filtered views: snapshot first, then the stream from the snapshot's position. ---

const snapshot = await (await fetch('/app/entities')).json();
const viewStates = [];
function showViewStates() {
  const all = new Set(viewStates);
  showState($('#views-state'), all.size === 1 ? viewStates[0] : [...all].join(' / '));
}

function subscribeView({ filters, changes, initial, onChange }) {
  for (const entity of snapshot.entities.filter(initial)) onChange({ change_type: 'create', entity_id: entity.id, new: entity });
  const client = new Centrifuge(wsUrl, { getToken: tokenFor('viewer') });
  const index = viewStates.push('connecting') - 1;
  client.on('state', (ctx) => { viewStates[index] = ctx.newState; showViewStates(); });
  const sub = client.newSubscription(CHANNEL, {
    since: snapshot.position,
    recoverable: true,
    data: { herald: { filters, changes } },
  });
  sub.on('publication', (ctx) => onChange(ctx.data));
  sub.on('error', (ctx) => { $('#api-result').textContent = `view subscription: ${ctx.error.message}`; });
  sub.subscribe();
  client.connect();
  return sub;
}

// View 1: project alpha, full form (each change carries the whole new entity).
const project = new Map();
function renderProject() {
  const rows = [...project.values()].map((e) => {
    const row = document.createElement('tr');
    row.dataset.id = e.id;
    row.innerHTML = '<td></td><td></td><td></td><td class="status"></td><td></td>';
    const cells = row.querySelectorAll('td');
    cells[0].textContent = e.id; cells[1].textContent = e.entity_type; cells[2].textContent = e.title ?? e.text; cells[3].textContent = e.status ?? '';
    const done = Object.assign(document.createElement('button'), { textContent: 'done' });
    done.onclick = () => api('PATCH', `/app/entities/${e.id}`, { status: 'done' });
    const move = Object.assign(document.createElement('button'), { textContent: '→ beta' });
    move.onclick = () => api('PATCH', `/app/entities/${e.id}`, { project_id: 'beta' });
    const del = Object.assign(document.createElement('button'), { textContent: '✕' });
    del.onclick = () => api('DELETE', `/app/entities/${e.id}`);
    cells[4].append(done, move, del);
    return row;
  });
  $('#view-project tbody').replaceChildren(...rows);
}
subscribeView({
  filters: [
    { key: 'project_id', cmp: 'eq', val: 'alpha' },
    { key: 'previous_project_id', cmp: 'eq', val: 'alpha' },
  ],
  changes: 'full',
  initial: (e) => e.project_id === 'alpha',
  onChange(change) {
    if (change.change_type === 'delete') project.delete(change.entity_id);
    else if (change.change_type === 'bulk') {
      for (const id of change.summary.ids) if (project.has(id)) Object.assign(project.get(id), change.summary.set);
    } else if (change.new.project_id === 'alpha') project.set(change.entity_id, change.new);
    else project.delete(change.entity_id); // moved to another project
    renderProject();
  },
});

// View 2: comments and every deletion, patch form (updates carry only the JSON Patch).
const comments = new Map();
function renderComments() {
  $('#view-comments .comments').replaceChildren(...[...comments.values()].map((c) => {
    const li = document.createElement('li');
    li.dataset.id = c.id;
    li.textContent = `${c.id} (${c.project_id}): ${c.text}`;
    return li;
  }));
}
subscribeView({
  filters: [
    { key: 'entity_type', cmp: 'eq', val: 'comment' },
    { key: 'change_type', cmp: 'eq', val: 'delete' },
  ],
  changes: 'patch',
  initial: (e) => e.entity_type === 'comment',
  onChange(change) {
    if (change.change_type === 'delete') {
      comments.delete(change.entity_id);
      const li = Object.assign(document.createElement('li'), { textContent: `${change.entity_type} ${change.entity_id}` });
      li.dataset.id = change.entity_id;
      $('#view-comments .deleted').prepend(li);
    } else if (change.new) {
      comments.set(change.entity_id, change.new); // from the snapshot
    } else {
      comments.set(change.entity_id, applyPatch(comments.get(change.entity_id), change.patch));
    }
    renderComments();
  },
});

// --- The device: every change, acknowledged; offline and back; resume on a fresh page. ---

const device = new Centrifuge(wsUrl, { getToken: tokenFor('alice') });
device.on('state', (ctx) => showState($('#device-state'), ctx.newState));
const inbox = device.newSubscription(CHANNEL, { recoverable: true, data: { herald: { resume: true } } });
inbox.on('state', (ctx) => showState($('#device-sub'), ctx.newState));
inbox.on('subscribed', (ctx) => {
  const recovery = ctx.wasRecovering ? `recovered: ${ctx.recovered}` : 'live';
  $('#device-recovery').textContent = `(${recovery})`;
  $('#device-recovery').dataset.recovered = String(ctx.recovered);
});

let ackedOffset = 0;
let ackTimer = null;
let latestOffset = 0;
function acknowledge() {
  ackTimer = null;
  const offset = latestOffset;
  // Cumulative: one call confirms every change up to `offset` and moves alice's durable cursor.
  device.rpc('herald.ack', { channel: CHANNEL, offset }).then(() => {
    ackedOffset = Math.max(ackedOffset, offset);
    $('#device-acked').textContent = ackedOffset;
    $('#device-acked').dataset.offset = ackedOffset;
  }, (error) => { $('#device-acked').title = `ack failed: ${error.message}`; });
}
inbox.on('publication', (ctx) => {
  const change = ctx.data;
  const li = document.createElement('li');
  li.dataset.offset = ctx.offset;
  const fields = change.change_type === 'update' ? `: ${change.changed_fields.join(', ')}` : '';
  li.textContent = `${change.change_type} ${change.entity_type} ${change.entity_id || ''}${fields}`;
  $('#view-device .inbox').prepend(li);
  latestOffset = Math.max(latestOffset, ctx.offset);
  if (!ackTimer) ackTimer = setTimeout(acknowledge, 100);
});
inbox.subscribe();
device.connect();

$('#toggle-online').onclick = () => {
  const offline = $('#toggle-online').textContent === 'Go online';
  if (offline) device.connect(); else device.disconnect();
  $('#toggle-online').textContent = offline ? 'Go offline' : 'Go online';
};

for (const [form, type] of [['#create-task', 'task'], ['#create-comment', 'comment']]) {
  $(form).onsubmit = (event) => {
    event.preventDefault();
    const fields = Object.fromEntries(new FormData(event.target));
    api('POST', '/app/entities', { entity_type: type, ...fields, ...(type === 'task' ? { status: 'open' } : {}) });
    event.target.reset();
  };
}
$('#bulk').onsubmit = (event) => {
  event.preventDefault();
  api('POST', '/app/bulk', Object.fromEntries(new FormData(event.target)));
};
