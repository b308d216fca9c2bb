// The built-in modules, by the name used in the config's module lists.
// Loaded lazily so that a host only pays for what it enables.
import type { ModuleDefinition } from '../src/modules/api.ts';

type ModuleImport = () => Promise<{ default: ModuleDefinition }>;

export const builtinModules: Record<string, ModuleImport> = {
  disco: () => import('./disco.ts') as Promise<{ default: ModuleDefinition }>,
  ping: () => import('./ping.ts') as Promise<{ default: ModuleDefinition }>,
  version: () => import('./version.ts') as Promise<{ default: ModuleDefinition }>,
  time: () => import('./time.ts') as Promise<{ default: ModuleDefinition }>,
  register: () => import('./register.ts') as Promise<{ default: ModuleDefinition }>,
  roster: () => import('./roster.ts') as Promise<{ default: ModuleDefinition }>,
  presence: () => import('./presence/index.ts') as Promise<{ default: ModuleDefinition }>,
};
