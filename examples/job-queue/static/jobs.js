// The job-queue pages: job events on `jobs:events` (Herald delivers a user only their own; an
// admin token gets all), queue positions for everyone on `queue:positions`.
const $ = (selector) => document.querySelector(selector);

export async function start({ user, role = '', showOwner = false }) {
  async function fetchToken() {
    const response = await fetch(`/app/token?user=${encodeURIComponent(user)}&role=${role}`);
    if (!response.ok) throw new Error(`token: ${response.status} ${await response.text()}`);
    return (await response.json()).token;
  }
  const centrifuge = new Centrifuge(`ws://${location.host}/connection/websocket`, { getToken: fetchToken });
  centrifuge.on('state', (ctx) => { $('#status').textContent = ctx.newState; $('#status').dataset.state = ctx.newState; });

  const jobs = new Map(); // id -> job (newest seq wins)
  const history = new Map(); // id -> statuses seen
  const details = new Map();
  const positions = new Map(); // job id -> position (0: left the queue)
  let positionUpdates = 0;
  let maxWaiting = 0;

  function merge(job, detail) {
    const known = jobs.get(job.id);
    if (known && known.seq >= job.seq) return;
    jobs.set(job.id, job);
    if (detail?.error) details.set(job.id, detail.error);
    render();
  }

  function render() {
    const rows = [...jobs.values()].sort((a, b) => b.id - a.id).map((job) => {
      const row = document.createElement('tr');
      row.dataset.id = job.id;
      row.dataset.status = job.status;
      row.dataset.history = (history.get(job.id) ?? []).join(',');
      const position = positions.get(job.id);
      const cells = [job.id, ...(showOwner ? [job.user] : []), job.kind, job.status, job.attempt || '', position ? `#${position}` : '', details.get(job.id) ?? ''];
      for (const cell of cells) row.append(Object.assign(document.createElement('td'), { textContent: cell }));
      row.children[showOwner ? 3 : 2].className = `status ${job.status}`;
      return row;
    });
    $('#jobs').replaceChildren(...rows);
    const waiting = [...positions.entries()].filter(([, p]) => p > 0).sort((a, b) => a[1] - b[1]);
    maxWaiting = Math.max(maxWaiting, waiting.length);
    $('#queue').dataset.waiting = waiting.length;
    $('#queue').dataset.maxWaiting = maxWaiting;
    $('#queue').dataset.updates = positionUpdates;
    $('#queue-count').textContent = waiting.length;
    $('#queue-list').textContent = waiting.map(([id, p]) => `#${p}: job ${id}`).join(' · ') || 'empty';
  }

  const events = centrifuge.newSubscription('jobs:events', { recoverable: true });
  events.on('publication', ({ data }) => {
    history.set(data.job.id, [...(history.get(data.job.id) ?? []), data.kind]);
    merge(data.job, data.detail);
  });
  const queue = centrifuge.newSubscription('queue:positions', { recoverable: true });
  queue.on('publication', ({ data }) => {
    positionUpdates += 1;
    positions.set(data.job_id, data.position);
    render();
  });
  // Stale positions that were shed for this slow client are listed in a gap signal; only the
  // latest position matters, so the page just notes it.
  centrifuge.on('message', (ctx) => {
    if (ctx.data?.herald?.gap) $('#gaps').textContent = `skipped ${ctx.data.herald.gap.offsets?.length ?? 0} stale updates`;
  });
  const subscribed = Promise.all([events, queue].map((sub) => new Promise((resolve) => sub.once('subscribed', resolve))));
  events.subscribe();
  queue.subscribe();
  centrifuge.connect();

  // The snapshot comes after subscribing, so nothing falls between; `seq` settles the overlap.
  await subscribed;
  const token = await fetchToken();
  const response = await fetch('/app/jobs', { headers: { Authorization: `Bearer ${token}` } });
  const snapshot = await response.json();
  if (!response.ok) throw new Error(snapshot.error);
  snapshot.waiting.forEach((id, index) => { if (!positions.has(id)) positions.set(id, index + 1); });
  for (const job of snapshot.jobs) merge(job);
  render();
  $('#jobs').dataset.loaded = 'true';

  return {
    async submit(kind, count = 1) {
      const response = await fetch('/app/jobs', {
        method: 'POST',
        headers: { Authorization: `Bearer ${await fetchToken()}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ kind, count }),
      });
      if (!response.ok) $('#error').textContent = (await response.json()).error;
    },
  };
}
