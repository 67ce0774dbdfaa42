// Browser-test helpers: the real herald binary on a free loopback port with its store in a temp
// dir (the approach of tests/interop/lib/herald.js), HS256 tokens, the server HTTP API, and a
// static server for the test page and the built packages. Every wait has a deadline.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
export const CLIENTS_JS = path.resolve(here, '..');
export const REPO = path.resolve(CLIENTS_JS, '..', '..');
export const HERALD_BIN = process.env.HERALD_BIN || path.join(REPO, 'target', 'debug', 'herald');
export const ARTIFACTS = path.join(CLIENTS_JS, 'test-artifacts');

export const SECRET = 'browser-test-hmac-secret';
export const API_KEY = 'browser-test-api-key';

/**
 * Channels without a namespace: everything the hooks use (history, recovery, presence, join/leave);
 * `orders:` channels also require acknowledgements.
 */
export function heraldConfig() {
  const open = {
    presence: true,
    join_leave: true,
    history_size: 100,
    history_ttl: '300s',
    allow_recovery: true,
    force_recovery: true,
    allow_subscribe_for_client: true,
    allow_presence_for_subscriber: true,
    allow_history_for_subscriber: true,
  };
  return {
    client: {
      token: { hmac_secret_key: SECRET },
      // Pages are served from another loopback port.
      allowed_origins: ['*'],
    },
    http_api: { key: API_KEY },
    channel: {
      without_namespace: open,
      // Acknowledged delivery, with retries quick enough for a test.
      namespaces: [{ name: 'orders', ...open, require_ack: true, ack_timeout: '300ms', ack_max_retries: 3 }],
    },
  };
}

export async function deadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

export interface Herald {
  port: number;
  http: string;
  ws: string;
  dataDir: string;
  stderr: () => string;
  /** SIGTERM (clients get 3001 and reconnect), SIGKILL after 5 s; keeps the data dir. */
  stop(): Promise<void>;
  /** Stops and removes the temp dir. */
  dispose(): Promise<void>;
}

/**
 * Starts `herald serve` on `port` (0: any free one) with its store in `dataDir` (default: a new
 * temp dir; `memory`: no store) and `config` (default `heraldConfig()`).
 */
export async function startHerald(
  options: { port?: number; dataDir?: string; memory?: boolean; config?: unknown } = {},
): Promise<Herald> {
  if (!existsSync(HERALD_BIN)) {
    throw new Error(`no herald binary at ${HERALD_BIN}: build it (cargo build -p herald) or set HERALD_BIN`);
  }
  const dir = await mkdtemp(path.join(tmpdir(), 'herald-browser-'));
  const dataDir = options.dataDir ?? path.join(dir, 'data');
  const configFile = path.join(dir, 'config.json');
  await writeFile(configFile, JSON.stringify(options.config ?? heraldConfig(), null, 2));
  const store = options.memory ? ['--memory'] : ['--data-dir', dataDir];
  const child: ChildProcess = spawn(
    HERALD_BIN,
    ['serve', '--port', String(options.port ?? 0), ...store, '--config', configFile],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' } },
  );
  let stderr = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (chunk: string) => {
    stderr += chunk;
    if (process.env.HERALD_LOG) process.stderr.write(chunk);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      try {
        await deadline(exited, 5000, 'herald to exit after SIGTERM');
      } catch (error) {
        child.kill('SIGKILL');
        await exited;
        throw error;
      }
    }
  };
  let stdout = '';
  child.stdout?.setEncoding('utf8');
  const port = await deadline(
    new Promise<number>((resolve, reject) => {
      child.stdout?.on('data', (chunk: string) => {
        stdout += chunk;
        const match = stdout.match(/herald: listening on http:\/\/127\.0\.0\.1:(\d+)/);
        if (match) resolve(Number(match[1]));
      });
      child.once('error', reject);
      child.once('exit', (code, signal) => reject(new Error(`herald exited early (code ${code}, signal ${signal}): ${stderr}`)));
    }),
    15000,
    `herald's listening line (stdout so far: ${JSON.stringify(stdout)})`,
  ).catch(async (error: unknown) => {
    await stop().catch(() => {});
    throw error;
  });
  return {
    port,
    http: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}/connection/websocket`,
    dataDir,
    stderr: () => stderr,
    stop,
    async dispose() {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** A connection token (HS256) for `user`, valid for an hour. */
export function connectionToken(user: string): string {
  const unsigned = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  return `${unsigned}.${createHmac('sha256', SECRET).update(unsigned).digest('base64url')}`;
}

/** POSTs to /api/`method` and returns `result`; throws with the answer otherwise. */
export async function api<T = unknown>(herald: Herald, method: string, body: unknown): Promise<T> {
  const response = await deadline(
    fetch(`${herald.http}/api/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
      body: JSON.stringify(body),
    }),
    10000,
    `api ${method}`,
  );
  const text = await response.text();
  let answer: { result?: T; error?: unknown };
  try {
    answer = JSON.parse(text);
  } catch {
    throw new Error(`api ${method}: HTTP ${response.status}, not JSON: ${text}`);
  }
  if (answer.error || answer.result === undefined) {
    throw new Error(`api ${method} ${JSON.stringify(body)} answered HTTP ${response.status} ${text}`);
  }
  return answer.result;
}

/** Resolves once `check` resolves true (checked every 50 ms), or fails after `ms`. */
export async function waitFor(check: () => Promise<boolean>, what: string, ms = 10000): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The value of a Prometheus counter (summed over its labels) from /metrics; 0 when absent. */
export async function metric(herald: Herald, name: string): Promise<number> {
  const response = await deadline(fetch(`${herald.http}/metrics`), 10000, 'GET /metrics');
  const text = await response.text();
  let total = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(name + ' ') || line.startsWith(name + '{')) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

/** Waits until `channel` has `clients` subscribed connections on the server. */
export function waitForSubscribers(herald: Herald, channel: string, clients: number): Promise<void> {
  return waitFor(async () => {
    const result = await api<{ channels: Record<string, { num_clients: number }> }>(herald, 'channels', { pattern: channel });
    return (result.channels[channel]?.num_clients ?? 0) === clients;
  }, `${clients} subscriber(s) on ${channel}`);
}

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.map': 'application/json',
  '.css': 'text/css; charset=utf-8',
};

export interface StaticServer {
  url: string;
  /** What `/app/snapshot?channel=C` answers: the application's own state, as a REST API would. */
  snapshots: Map<string, unknown>;
  close(): Promise<void>;
}

/** Serves the test pages at `/`, the built packages at `/dist/client/` and `/dist/react/`. */
export async function startStaticServer(): Promise<StaticServer> {
  const roots: [string, string][] = [
    ['/dist/client/', path.join(CLIENTS_JS, 'packages', 'client', 'dist')],
    ['/dist/react/', path.join(CLIENTS_JS, 'packages', 'react', 'dist')],
    ['/', path.join(here, 'browser', 'pages')],
  ];
  const snapshots = new Map<string, unknown>();
  const server: Server = createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://localhost');
    if (url.pathname === '/app/snapshot') {
      const channel = url.searchParams.get('channel') ?? '';
      response.writeHead(200, { 'Content-Type': 'application/json' });
      response.end(JSON.stringify(snapshots.get(channel) ?? []));
      return;
    }
    for (const [prefix, root] of roots) {
      if (!url.pathname.startsWith(prefix)) continue;
      const file = path.resolve(root, '.' + url.pathname.slice(prefix.length - 1));
      if (!file.startsWith(root) || !existsSync(file) || !statSync(file).isFile()) break;
      response.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
      createReadStream(file).pipe(response);
      return;
    }
    response.writeHead(404, { 'Content-Type': 'text/plain' });
    response.end(`not found: ${url.pathname}`);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    snapshots,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
