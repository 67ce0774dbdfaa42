import { defineConfig } from 'vitest/config';

// Tests against the real herald binary (HERALD_BIN or target/debug/herald); scripts/test-js.sh runs them.
export default defineConfig({
  test: {
    include: ['test/integration/**/*.test.ts'],
    environment: 'node',
    testTimeout: 120000,
    hookTimeout: 30000,
    fileParallelism: false,
  },
});
