#!/usr/bin/env node
// Entry point of the `chorus` command. The TypeScript sources are loaded
// through tsx so that a fresh clone runs without a build step; `npm run build`
// still type-checks and emits JavaScript for those who prefer it.
import { register } from 'tsx/esm/api';

register();
await import('../src/main.ts');
