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
  carbons: () => import('./carbons.ts') as Promise<{ default: ModuleDefinition }>,
  offline: () => import('./offline.ts') as Promise<{ default: ModuleDefinition }>,
  vcard: () => import('./vcard.ts') as Promise<{ default: ModuleDefinition }>,
  private: () => import('./private.ts') as Promise<{ default: ModuleDefinition }>,
  last: () => import('./last.ts') as Promise<{ default: ModuleDefinition }>,
  blocking: () => import('./blocking.ts') as Promise<{ default: ModuleDefinition }>,
  smacks: () => import('./smacks.ts') as Promise<{ default: ModuleDefinition }>,
  csi: () => import('./csi.ts') as Promise<{ default: ModuleDefinition }>,
  keepalive: () => import('./keepalive.ts') as Promise<{ default: ModuleDefinition }>,
  mam: () => import('./mam/index.ts') as Promise<{ default: ModuleDefinition }>,
  inbox: () => import('./inbox.ts') as Promise<{ default: ModuleDefinition }>,
  muc: () => import('./muc/index.ts') as Promise<{ default: ModuleDefinition }>,
};
