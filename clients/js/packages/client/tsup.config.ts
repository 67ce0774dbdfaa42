import { defineConfig } from 'tsup';

export default defineConfig([
  {
    // For bundlers and Node: the SDK and fast-json-patch stay dependencies.
    entry: { index: 'src/index.ts' },
    format: ['esm'],
    dts: true,
    sourcemap: true,
    target: 'es2021',
  },
  {
    // For a page without a bundler: <script type="module"> import { HeraldClient } from '.../herald-client.browser.js'.
    entry: { 'herald-client.browser': 'src/index.ts' },
    format: ['esm'],
    sourcemap: true,
    noExternal: [/.*/],
    platform: 'browser',
    target: 'es2021',
    minify: true,
  },
]);
