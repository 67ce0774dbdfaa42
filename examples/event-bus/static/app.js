// One subscription per monitored item (`items:<item>`), chosen with ?items=line-1,line-2, plus
// `alerts:all`, which everyone receives.
const ITEMS = ['line-1', 'line-2', 'line-3'];
const params = new URLSearchParams(location.search);
const user = params.get('user') || 'ops';
const chosen = new Set((params.get('items') || ITEMS.join(',')).split(',').filter((i) => ITEMS.includes(i)));
const $ = (id) => document.getElementById(id);
$('user-name').textContent = user;

async function fetchToken() {
  const response = await fetch(`/app/token?user=${encodeURIComponent(user)}`);
  if (!response.ok) throw new Error(`token: ${response.status} ${await response.text()}`);
  return (await response.json()).token;
}
const centrifuge = new Centrifuge(`ws://${location.host}/connection/websocket`, { getToken: fetchToken });
function showError(message) { $('errors').textContent = message; }
centrifuge.on('error', (ctx) => showError(ctx.error.message));
centrifuge.on('state', (ctx) => { $('status').textContent = ctx.newState; $('status').dataset.state = ctx.newState; });

const limits = await (await fetch('/app/limits')).json();
const panels = new Map();

function panel(item) {
  const section = document.createElement('section');
  section.id = `item-${item}`;
  section.dataset.count = '0';
  section.innerHTML = `<h2>${item}</h2><div class="value">–</div>
    <div class="muted">limits <span class="limits"></span> · <span class="count">0</span> samples</div>`;
  const show = () => { section.querySelector('.limits').textContent = `${limits[item].lower} – ${limits[item].upper}`; };
  show();
  return { section, show };
}

function subscribeItem(item) {
  const { section, show } = panel(item);
  $('items').append(section);
  const sub = centrifuge.newSubscription(`items:${item}`, { recoverable: true });
  sub.on('publication', ({ data }) => {
    if (data.kind === 'sample') {
      const count = Number(section.dataset.count) + 1;
      section.dataset.count = String(count);
      section.dataset.lastSequence = String(data.sequence);
      section.querySelector('.count').textContent = count;
      const value = section.querySelector('.value');
      value.textContent = data.value.toFixed(2);
      value.classList.toggle('violation', data.value > limits[item].upper || data.value < limits[item].lower);
    } else if (data.kind === 'control_limits') {
      limits[item] = { lower: data.lower, upper: data.upper };
      show();
    }
  });
  sub.on('error', (ctx) => showError(`items:${item}: ${ctx.error.message}`));
  sub.subscribe();
  panels.set(item, { section, sub });
}

function unsubscribeItem(item) {
  const entry = panels.get(item);
  if (!entry) return;
  entry.sub.unsubscribe();
  centrifuge.removeSubscription(entry.sub);
  entry.section.remove();
  panels.delete(item);
}

for (const item of ITEMS) {
  const label = document.createElement('label');
  const box = Object.assign(document.createElement('input'), { type: 'checkbox', checked: chosen.has(item), id: `choose-${item}` });
  box.addEventListener('change', () => (box.checked ? subscribeItem(item) : unsubscribeItem(item)));
  label.append(box, ` ${item} `);
  $('item-choice').append(label);
  if (chosen.has(item)) subscribeItem(item);
}

const alerts = centrifuge.newSubscription('alerts:all', { recoverable: true });
alerts.on('error', (ctx) => showError(`alerts:all: ${ctx.error.message}`));
alerts.on('publication', ({ data }) => {
  if (data.kind === 'violation') {
    const li = document.createElement('li');
    li.id = `violation-${data.id}`;
    li.className = 'violation';
    const button = Object.assign(document.createElement('button'), { textContent: 'Acknowledge' });
    button.addEventListener('click', async () => {
      button.disabled = true;
      const response = await fetch(`/app/violations/${data.id}/ack`, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ by: user }),
      });
      if (!response.ok) { button.disabled = false; button.title = await response.text(); }
    });
    li.append(`#${data.id} ${data.item}: ${data.value.toFixed(2)} beyond the ${data.limit} limit `, button);
    $('alerts').prepend(li);
  } else if (data.kind === 'acknowledged') {
    const li = $(`violation-${data.violation_id}`);
    if (!li) return;
    li.className = 'acked';
    li.dataset.acknowledgedBy = data.by;
    li.querySelector('button')?.replaceWith(`acknowledged by ${data.by}`);
  }
});
alerts.subscribe();
centrifuge.connect();

async function showHandlers() {
  try {
    const statuses = await (await fetch('/app/handlers')).json();
    $('handlers').replaceChildren(...statuses.map((h) => {
      const row = document.createElement('tr');
      row.id = `handler-${h.name}`;
      for (const cell of [h.name, h.handled, h.failed, h.panicked, h.dropped, h.last_failure ?? '']) {
        row.append(Object.assign(document.createElement('td'), { textContent: cell }));
      }
      return row;
    }));
  } catch {
    // the server is restarting; the next poll retries
  }
}
showHandlers();
setInterval(showHandlers, 1000);
