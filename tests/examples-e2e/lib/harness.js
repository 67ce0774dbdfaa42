// Starts an example binary on a free loopback port and drives its pages in headless Chromium.
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../..');
export const artifacts = path.resolve(here, '../artifacts');
const binDir = process.env.EXAMPLES_BIN_DIR || path.join(root, 'target/debug');

/**
 * Runs `example-<name>` with `HERALD_HTTP_SERVER_PORT=0` (or `port`) and resolves once it
 * printed the address it listens on. `stop()` sends SIGTERM and waits for the exit.
 */
export async function startExample(name, { env = {}, port = 0, args = [] } = {}) {
  const binary = path.join(binDir, `example-${name}`);
  const child = spawn(binary, args, {
    env: { ...process.env, RUST_LOG: 'warn', ...env, HERALD_HTTP_SERVER_PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const origin = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`example-${name} did not start in 20 s\n${stdout}\n${stderr}`)), 20000);
    child.on('error', (error) => { clearTimeout(timer); reject(new Error(`cannot run ${binary}: ${error.message}`)); });
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      // Up to the "/" after the port: a chunk may end in the middle of the number.
      const match = stdout.match(/open (http:\/\/127\.0\.0\.1:\d+)\//);
      if (match) { clearTimeout(timer); resolve(match[1]); }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`example-${name} exited (${code ?? signal}) before listening\n${stdout}\n${stderr}`));
    });
  });
  return {
    origin,
    port: Number(new URL(origin).port),
    child,
    exited,
    output: () => ({ stdout, stderr }),
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu'],
  });
}

/** A new page in its own context (its own storage), failing the test on page errors. */
export async function openPage(browser, url, { errors } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const page = await context.newPage();
  page.on('pageerror', (error) => (errors ?? []).push(error.message));
  await page.goto(url);
  return page;
}

export async function screenshot(page, name) {
  mkdirSync(artifacts, { recursive: true });
  await page.screenshot({ path: path.join(artifacts, `${name}.png`), fullPage: true });
}

/** Calls the Herald server API of an example. */
export async function api(origin, key, method, body) {
  const response = await fetch(`${origin}/api/${method}`, {
    method: 'POST',
    headers: { 'X-API-Key': key, 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const answer = await response.json();
  if (answer.error) throw new Error(`${method}: ${answer.error.code} ${answer.error.message}`);
  return answer.result;
}

export async function json(url, init) {
  const response = await fetch(url, init);
  const text = await response.text();
  if (!response.ok) throw new Error(`${init?.method ?? 'GET'} ${url}: HTTP ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export function post(url, body) {
  return json(url, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
}

/** Polls `probe` (server state, not the DOM) until it returns a truthy value, up to `timeout` ms. */
export async function eventually(probe, { timeout = 15000, interval = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/** Waits until the element's text is exactly `text`. */
export function textIs(page, selector, text, timeout = 15000) {
  return page.waitForFunction(
    ([s, t]) => document.querySelector(s)?.textContent.trim() === t,
    [selector, String(text)],
    { timeout },
  );
}
