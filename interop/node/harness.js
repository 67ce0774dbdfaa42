// Starts the real herald binary on an ephemeral port with a temporary config, mints tokens,
// calls the server API, and waits for SDK events with timeouts.
import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const HERALD = process.env.HERALD_BIN || join(root, 'target', 'debug', 'herald');
export const SECRET = 'interop-secret';
export const API_KEY = 'interop-api-key';

export const openNamespace = {
  presence: true,
  join_leave: true,
  history_size: 100,
  history_ttl: '300s',
  allow_recovery: true,
  force_recovery: true,
  allow_positioning: true,
  allow_subscribe_for_client: true,
  allow_publish_for_client: true,
  allow_presence_for_subscriber: true,
  allow_history_for_subscriber: true,
};

export function baseConfig(overrides = {}) {
  return {
    client: {
      token: { hmac_secret_key: SECRET },
      ping_interval: '1s',
      pong_timeout: '800ms',
      allowed_origins: ['*'],
      ...(overrides.client || {}),
    },
    http_api: { key: API_KEY },
    channel: {
      without_namespace: openNamespace,
      namespaces: overrides.namespaces || [],
    },
    storage: { engine: 'memory' },
  };
}

/** Starts herald with `config` (an object written as JSON) and `args`; resolves with its URLs. */
export async function startHerald(config, args = []) {
  const dir = mkdtempSync(join(tmpdir(), 'herald-interop-'));
  const file = join(dir, 'config.json');
  writeFileSync(file, JSON.stringify(config));
  const child = spawn(HERALD, ['serve', '--config', file, '--port', '0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' },
  });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`herald did not start: ${stderr}`)), 15000);
    let out = '';
    child.stdout.on('data', (d) => {
      out += d;
      const match = out.match(/listening on (http:\/\/\S+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.on('exit', (code) => reject(new Error(`herald exited with ${code}: ${stderr}`)));
  });
  const server = {
    clients: [],
    base,
    ws: base.replace('http://', 'ws://') + '/connection/websocket',
    child,
    async stop() {
      // Clients first: a client left connecting would keep the test process alive.
      for (const client of server.clients) client.disconnect();
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await withTimeout(exited, 10000, 'herald exit');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

/** An HS256 JWT signed with `secret`. */
export function jwt(claims, secret = SECRET) {
  const head = b64url({ alg: 'HS256', typ: 'JWT' });
  const body = b64url(claims);
  const signature = createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${signature}`;
}

export function connectionToken(user, extra = {}) {
  return jwt({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600, ...extra });
}

export async function api(server, method, body) {
  const response = await fetch(`${server.base}/api/${method}`, {
    method: 'POST',
    headers: { 'X-API-Key': API_KEY, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  return response.json();
}

export function newClient(server, options = {}) {
  const client = new Centrifuge(server.ws, { websocket: WebSocket, minReconnectDelay: 100, maxReconnectDelay: 500, ...options });
  server.clients.push(client);
  return client;
}

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Resolves with the next `event` of `emitter` (optionally the first matching `pred`). */
export function once(emitter, event, pred = () => true, ms = 10000) {
  return withTimeout(
    new Promise((resolve) => {
      const handler = (ctx) => {
        if (pred(ctx)) {
          emitter.removeListener(event, handler);
          resolve(ctx);
        }
      };
      emitter.on(event, handler);
    }),
    ms,
    `${event} event`,
  );
}

/** Collects `event` payloads until `count` arrived. */
export function collect(emitter, event, count, ms = 10000) {
  const items = [];
  return withTimeout(
    new Promise((resolve) => {
      const handler = (ctx) => {
        items.push(ctx);
        if (items.length === count) {
          emitter.removeListener(event, handler);
          resolve(items);
        }
      };
      emitter.on(event, handler);
    }),
    ms,
    `${count} ${event} events`,
  ).catch((error) => {
    throw new Error(`${error.message} (got ${items.length})`);
  });
}
