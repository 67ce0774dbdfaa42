import { defineConfig } from 'tsup';

export default defineConfig([
  {
    // For bundlers: React and @herald/client stay imports.
    entry: { index: 'src/index.ts' },
    format: ['esm'],
    dts: true,
    sourcemap: true,
    target: 'es2021',
    external: ['react', 'react-dom', '@herald/client'],
  },
  {
    // For a page without a bundler (and the browser tests): React, ReactDOM, htm, the client
    // and the SDK in one module.
    entry: { 'herald-react.standalone': 'src/standalone.ts' },
    format: ['esm'],
    sourcemap: true,
    noExternal: [/.*/],
    platform: 'browser',
    target: 'es2021',
    minify: true,
    env: { NODE_ENV: 'production' },
  },
]);
