/**
 * Everything a page without a bundler needs, in one ES module: React and ReactDOM, `html` (htm
 * bound to React.createElement, JSX-like templates without a build step), @herald/client and the
 * hooks. `<script type="module">import { html, createRoot, HeraldProvider } from './herald-react.standalone.js'`.
 */
import * as React from 'react';
import { createRoot } from 'react-dom/client';
import htm from 'htm';

export const html = htm.bind(React.createElement);
export { React, createRoot };
export * from '@herald/client';
export * from './index.js';
