import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['packages/*/test/**/*.test.ts', 'packages/*/test/**/*.test.tsx'],
    // The hooks resolve @herald/client to its source, so units need no build first.
    alias: { '@herald/client': new URL('./packages/client/src/index.ts', import.meta.url).pathname },
    environment: 'node',
    testTimeout: 10000,
  },
});
