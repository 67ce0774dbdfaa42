// Test helpers: run the real herald binary on an ephemeral port, mint HS256 tokens,
// call the server HTTP API, build stock `centrifuge` clients, and wait for events with
// deadlines (never sleep-and-hope).
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';
import { Centrifuge as ProtobufCentrifuge } from 'centrifuge/build/protobuf';

const here = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(here, '..', '..', '..');
export const HERALD_BIN = process.env.HERALD_BIN || path.join(REPO, 'target', 'debug', 'herald');

export const SECRET = 'interop-hmac-secret';
export const API_KEY = 'interop-api-key';

/** Channel options used for channels without a namespace in the default config. */
export const OPEN_CHANNELS = {
  presence: true,
  join_leave: true,
  history_size: 100,
  history_ttl: '300s',
  allow_recovery: true,
  force_recovery: true,
  allow_subscribe_for_client: true,
  allow_publish_for_client: true,
  allow_presence_for_subscriber: true,
  allow_history_for_subscriber: true,
};

/** The config from the brief (Centrifugo v6 key names); `extra` is merged per section. */
export function defaultConfig(extra = {}) {
  return {
    client: {
      token: { hmac_secret_key: SECRET },
      ping_interval: '1s',
      pong_timeout: '800ms',
      allowed_origins: ['*'],
      ...(extra.client ?? {}),
    },
    http_api: { key: API_KEY },
    channel: {
      without_namespace: { ...OPEN_CHANNELS, ...(extra.without_namespace ?? {}) },
      ...(extra.namespaces ? { namespaces: extra.namespaces } : {}),
    },
  };
}

/** Rejects with a descriptive error when `promise` does not settle within `ms`. */
export function deadline(promise, ms, what) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/**
 * Starts `herald serve --port 0` with `config` written to a temp file (none when null;
 * `--dev` when `options.dev`) and its store in that temp dir, waits for the "listening on" line, and returns a handle whose `stop()`
 * sends SIGTERM and waits for exit (SIGKILL after 5 s). Pass `t` (the node:test context) to
 * have the server stopped after the test whatever happens.
 */
export async function startHerald(t, config = defaultConfig(), options = {}) {
  const dir = await mkdtemp(path.join(tmpdir(), 'herald-interop-'));
  // The default engine (redb) in the temp dir: every run starts from an empty store, and
  // nothing is written where the tests run from.
  // `options.port` and `options.dataDir` let a test restart a server where it was.
  const dataDir = options.dataDir ?? path.join(dir, 'data');
  const args = ['serve', '--port', String(options.port ?? 0), '--data-dir', dataDir];
  if (config) {
    const file = path.join(dir, 'config.json');
    await writeFile(file, JSON.stringify(config, null, 2));
    args.push('--config', file);
  }
  if (options.dev) args.push('--dev');
  const child = spawn(HERALD_BIN, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
  });
  const handle = {
    child,
    dir,
    dataDir,
    stderr: '',
    clients: new Set(),
    port: 0,
    http: '',
    ws: '',
    async stop() {
      for (const client of handle.clients) {
        try { client.disconnect(); } catch { /* already gone */ }
      }
      handle.clients.clear();
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        try {
          await deadline(exited, 5000, 'herald to exit after SIGTERM');
        } catch (error) {
          child.kill('SIGKILL');
          await exited;
          throw error;
        }
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  if (t) t.after(() => handle.stop());
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk) => {
    handle.stderr += chunk;
    if (process.env.HERALD_LOG) process.stderr.write(chunk);
  });
  child.stdout.setEncoding('utf8');
  let stdout = '';
  try {
    handle.port = await deadline(
      new Promise((resolve, reject) => {
        child.stdout.on('data', (chunk) => {
          stdout += chunk;
          const match = stdout.match(/herald: listening on http:\/\/127\.0\.0\.1:(\d+)/);
          if (match) resolve(Number(match[1]));
        });
        child.once('error', reject);
        child.once('exit', (code, signal) =>
          reject(new Error(`herald exited early (code ${code}, signal ${signal}): ${handle.stderr}`)));
      }),
      15000,
      `herald's listening line (stdout so far: ${JSON.stringify(stdout)})`,
    );
  } catch (error) {
    if (!t) await handle.stop().catch(() => {});
    throw error;
  }
  handle.http = `http://127.0.0.1:${handle.port}`;
  handle.ws = `ws://127.0.0.1:${handle.port}/connection/websocket`;
  return handle;
}

const b64url = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

/** An HS256 JWT for `claims`. */
export function hs256(claims, secret = SECRET) {
  const unsigned = `${b64url({ alg: 'HS256', typ: 'JWT' })}.${b64url(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

export const connectionToken = (user, claims = {}, secret = SECRET) =>
  hs256({ sub: user, exp: inAnHour(), ...claims }, secret);

export const subscriptionToken = (user, channel, claims = {}) =>
  hs256({ sub: user, channel, exp: inAnHour(), ...claims });

/** POSTs `body` to /api/`method`; returns the parsed JSON answer (result or error). */
export async function api(server, method, body = {}, key = API_KEY) {
  const headers = { 'Content-Type': 'application/json' };
  if (key) headers['X-API-Key'] = key;
  const response = await deadline(
    fetch(`${server.http}/api/${method}`, { method: 'POST', headers, body: JSON.stringify(body) }),
    10000,
    `api ${method}`,
  );
  const text = await response.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`api ${method}: HTTP ${response.status}, not JSON: ${text}`);
  }
  return { status: response.status, ...json };
}

/** Like `api` but throws unless the answer holds a result; returns the result. */
export async function apiResult(server, method, body = {}) {
  const answer = await api(server, method, body);
  if (answer.error || answer.result === undefined) {
    throw new Error(`api ${method} ${JSON.stringify(body)} answered ${JSON.stringify(answer)}`);
  }
  return answer.result;
}

/** A client of `Sdk` over `ws` with the tests' reconnect settings, remembered so that `server.stop()` disconnects it. */
function rememberedClient(Sdk, server, options) {
  const client = new Sdk(server.ws, {
    websocket: WebSocket,
    minReconnectDelay: 100,
    maxReconnectDelay: 1000,
    timeout: 5000,
    ...options,
  });
  server.clients.add(client);
  return client;
}

/** A stock Centrifuge client (JSON). */
export const newClient = (server, options = {}) => rememberedClient(Centrifuge, server, options);

/**
 * A stock Centrifuge client of the SDK's Protobuf build (subprotocol `centrifuge-protobuf`,
 * binary frames), as the Swift, Kotlin and Dart SDKs speak. Its publication data are bytes.
 */
export const newProtobufClient = (server, options = {}) => rememberedClient(ProtobufCentrifuge, server, options);

/** JSON as the bytes a Protobuf client sends, and back. */
export const jsonBytes = (value) => new TextEncoder().encode(JSON.stringify(value));
export const fromJsonBytes = (bytes) => JSON.parse(new TextDecoder().decode(bytes));

/** Resolves with the first `event` payload of `emitter` that satisfies `pred`. */
export function nextEvent(emitter, event, { pred = () => true, ms = 10000 } = {}) {
  let handler;
  const waiting = new Promise((resolve) => {
    handler = (ctx) => {
      if (pred(ctx)) resolve(ctx);
    };
    emitter.on(event, handler);
  });
  return deadline(waiting, ms, `'${event}' event`).finally(() => emitter.removeListener(event, handler));
}

/** Starts recording `event` payloads; `until(n)` waits until n arrived. */
export function recorder(emitter, event) {
  const items = [];
  const waiters = [];
  const handler = (ctx) => {
    items.push(ctx);
    for (const waiter of [...waiters]) {
      if (items.length >= waiter.n) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(items);
      }
    }
  };
  emitter.on(event, handler);
  return {
    items,
    until(n, ms = 10000) {
      if (items.length >= n) return Promise.resolve(items);
      const waiting = new Promise((resolve) => waiters.push({ n, resolve }));
      return deadline(waiting, ms, `${n} '${event}' events`).catch((error) => {
        throw new Error(`${error.message} (got ${items.length}: ${JSON.stringify(items.map((i) => i.data ?? i))})`);
      });
    },
    stop() {
      emitter.removeListener(event, handler);
    },
  };
}

/** Connects `client` and resolves with the `connected` context. */
export async function connect(client, ms = 10000) {
  const connected = nextEvent(client, 'connected', { ms });
  client.connect();
  return connected;
}

/** Subscribes `sub` and resolves with the `subscribed` context (rejects on a subscription error). */
export function subscribe(sub, ms = 10000) {
  let onSubscribed;
  let onError;
  const waiting = new Promise((resolve, reject) => {
    onSubscribed = resolve;
    onError = (ctx) => reject(new Error(`subscription to ${sub.channel} failed: ${JSON.stringify(ctx)}`));
    sub.on('subscribed', onSubscribed);
    sub.on('error', onError);
  });
  sub.subscribe();
  return deadline(waiting, ms, `'subscribed' on ${sub.channel}`).finally(() => {
    sub.removeListener('subscribed', onSubscribed);
    sub.removeListener('error', onError);
  });
}

export const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
