// Settings page: a snapshot with its stream position, then every change from that position on.
// Reconnects with a 3 s to 30 s backoff and recovers what it missed (the server keeps history on
// disk, so this holds across a server restart).
const CHANNEL = 'settings:global';
const $ = (selector) => document.querySelector(selector);
const user = new URLSearchParams(location.search).get('user') || 'me';

function showState(element, state) { element.textContent = state; element.dataset.state = state; }

const snapshot = await (await fetch('/app/settings')).json();
const selects = new Map();
for (const { key, allowed } of snapshot.schema) {
  const label = Object.assign(document.createElement('label'), { textContent: key, htmlFor: `setting-${key}` });
  const select = Object.assign(document.createElement('select'), { id: `setting-${key}` });
  select.dataset.key = key;
  for (const value of allowed) select.append(new Option(value, value));
  select.addEventListener('change', async () => {
    const response = await fetch(`/app/settings/${key}`, {
      method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ value: select.value }),
    });
    if (!response.ok) $('#log').textContent = (await response.json()).error;
  });
  selects.set(key, select);
  $('#settings').append(label, select);
}

let applied = 0;
function setValue(key, value, highlight = true) {
  const select = selects.get(key);
  if (!select) return;
  select.value = value;
  select.dataset.value = value;
  if (key === 'theme') document.body.dataset.theme = value;
  if (!highlight) return;
  select.classList.add('changed');
  setTimeout(() => select.classList.remove('changed'), 800);
}
for (const [key, value] of Object.entries(snapshot.values)) setValue(key, value, false);
document.body.dataset.generation = snapshot.generation;

async function fetchToken() {
  const response = await fetch(`/app/token?user=${encodeURIComponent(user)}`);
  if (!response.ok) throw new Error(`token: ${response.status}`);
  return (await response.json()).token;
}
const centrifuge = new Centrifuge(`ws://${location.host}/connection/websocket`, {
  getToken: fetchToken,
  minReconnectDelay: 3000,
  maxReconnectDelay: 30000,
  // The server pings every 5 s; no ping for 5 + 25 = 30 s means the connection is dead.
  maxServerPingDelay: 25000,
});
centrifuge.on('state', (ctx) => showState($('#status'), ctx.newState));
centrifuge.on('disconnected', (ctx) => { $('#log').textContent = `disconnected: ${ctx.code} ${ctx.reason}`; });
centrifuge.on('connecting', (ctx) => { $('#log').textContent = `reconnecting (${ctx.code} ${ctx.reason})`; });
centrifuge.on('connected', () => { $('#log').textContent = ''; });

const sub = centrifuge.newSubscription(CHANNEL, { since: snapshot.position, recoverable: true });
sub.on('state', (ctx) => showState($('#sub-state'), ctx.newState));
sub.on('subscribed', (ctx) => {
  $('#recovery').textContent = ctx.wasRecovering ? `(recovered: ${ctx.recovered})` : '';
  $('#recovery').dataset.recovered = String(ctx.recovered);
});
sub.on('publication', ({ data }) => {
  if (data.kind === 'setting') {
    setValue(data.key, data.value);
    applied += 1;
    document.body.dataset.applied = applied;
  } else if (data.kind === 'reload') {
    for (const [key, value] of Object.entries(data.values)) setValue(key, value);
    document.body.dataset.generation = data.generation;
    $('#banner').textContent = `The server reloaded its settings (generation ${data.generation}); this tab is up to date.`;
  }
});
sub.subscribe();
centrifuge.connect();

for (const button of document.querySelectorAll('[data-preset]')) {
  button.onclick = async () => {
    const response = await fetch(`/app/presets/${button.dataset.preset}`, { method: 'POST' });
    $('#log').textContent = response.ok ? `preset ${button.dataset.preset} applied` : (await response.json()).error;
  };
}
$('#reload').onclick = () => fetch('/app/reload', { method: 'POST' });
