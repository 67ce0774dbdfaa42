// The test page: one HeraldClient, the status bar, and the sections the query asks for:
//   ?ws=URL&token=JWT&user=NAME&feed=CHANNEL&tasks=CHANNEL:full,CHANNEL:patch&presence=CHANNEL
//   &ack=auto|manual|off&history=N&minDelay=MS&maxDelay=MS
import {
  html,
  createRoot,
  HeraldClient,
  HeraldProvider,
  ConnectionStatus,
  useSubscription,
  useEntities,
  usePresence,
} from '/dist/react/herald-react.standalone.js';

const params = new URLSearchParams(location.search);
const client = new HeraldClient({
  url: params.get('ws'),
  token: params.get('token') ?? undefined,
  minReconnectDelay: Number(params.get('minDelay') ?? 500),
  maxReconnectDelay: Number(params.get('maxDelay') ?? 20000),
});

function Feed({ channel, ack, history }) {
  const feed = useSubscription(channel, { keep: 100, ack, history });
  return html`
    <section data-testid="feed" data-state=${feed.state} data-count=${feed.count}>
      <h2>Feed: ${channel}</h2>
      <div class="meta">
        ${feed.state}${feed.subscribed ? html`, recovered: <span data-testid="recovered">${String(feed.subscribed.recovered)}</span>` : ''}
        ${feed.resyncReason ? html` <span class="stale" data-testid="resync">resync: ${feed.resyncReason}</span>` : ''}
      </div>
      <ol>
        ${feed.publications.map(
          (p) => html`<li key=${p.offset} data-offset=${p.offset} data-source=${p.source}>
            ${p.data?.text ?? JSON.stringify(p.data)} <em>#${p.offset} ${p.source}</em>
          </li>`,
        )}
      </ol>
    </section>`;
}

// A bulk change this app understands: {"archive_status": S} removes the tasks with status S.
function applyBulk(entities, envelope) {
  const status = envelope.summary?.archive_status;
  if (typeof status !== 'string') return null;
  return new Map([...entities].filter(([, task]) => task.status !== status));
}

async function loadSnapshot(channel) {
  const response = await fetch(`/app/snapshot?channel=${encodeURIComponent(channel)}`);
  if (!response.ok) throw new Error(`snapshot HTTP ${response.status}`);
  return response.json();
}

function Tasks({ channel, form }) {
  const tasks = useEntities(channel, {
    changes: form,
    entityType: 'task',
    applyBulk,
    load: () => loadSnapshot(channel),
  });
  return html`
    <section
      data-testid=${`tasks-${form}`}
      data-subscribed=${String(tasks.subscribed)}
      data-loading=${String(tasks.loading)}
      data-count=${tasks.list.length}
      data-stale=${tasks.staleReason ?? ''}
      data-changes=${tasks.changesApplied}
    >
      <h2>Tasks (${form} form): ${channel}</h2>
      <table>
        <thead><tr><th>id</th><th>title</th><th>status</th></tr></thead>
        <tbody>
          ${[...tasks.entities].map(
            ([id, task]) => html`<tr key=${id} data-id=${id}><td>${id}</td><td>${task.title}</td><td>${task.status}</td></tr>`,
          )}
        </tbody>
      </table>
      <div class="meta">
        ${tasks.list.length} tasks, ${tasks.changesApplied} changes applied, last offset ${tasks.lastOffset}
        ${tasks.loading ? ', loading…' : ''}${tasks.staleReason ? html` <span class="stale">stale: ${tasks.staleReason}</span>` : ''}
      </div>
    </section>`;
}

function Presence({ channel }) {
  const presence = usePresence(channel);
  const users = [...new Set(presence.list.map((member) => member.user))].sort();
  return html`
    <section data-testid="presence" data-live=${String(presence.live)} data-clients=${presence.numClients} data-users=${presence.numUsers}>
      <h2>Presence: ${channel}</h2>
      <div><strong>${presence.numClients}</strong> connections, <strong>${presence.numUsers}</strong> users online</div>
      <ul>${users.map((user) => html`<li key=${user}>${user}</li>`)}</ul>
      ${presence.error ? html`<div class="stale">${presence.error}</div>` : ''}
    </section>`;
}

function App() {
  const feed = params.get('feed');
  const tasks = (params.get('tasks') ?? '').split(',').filter(Boolean);
  const presence = params.get('presence');
  return html`
    <${HeraldProvider} client=${client}>
      <header>
        <h1>Herald ${params.get('user') ? html`<span class="meta">as ${params.get('user')}</span>` : ''}</h1>
        <${ConnectionStatus} />
      </header>
      <main>
        ${feed ? html`<${Feed} channel=${feed} ack=${params.get('ack') ?? 'off'} history=${Number(params.get('history') ?? 0)} />` : ''}
        ${tasks.map((spec) => {
          const [channel, form] = spec.split(':');
          return html`<${Tasks} key=${spec} channel=${channel} form=${form ?? 'full'} />`;
        })}
        ${presence ? html`<${Presence} channel=${presence} />` : ''}
      </main>
    <//>`;
}

createRoot(document.getElementById('root')).render(html`<${App} />`);
