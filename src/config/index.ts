// Public entry point of the configuration subsystem.
export {
  configSchema,
  hostSchema,
  listenerSchema,
  defaultConfig,
  modulesForHost,
  isValidDomain,
  type ChorusConfig,
  type HostConfig,
  type ListenerConfig,
  type StorageConfig,
  type AuthConfig,
  type ThrottleConfig,
  type LimitsConfig,
  type SessionsConfig,
  type LogConfig,
} from './schema.ts';
export {
  loadConfig,
  parseConfig,
  formatPath,
  ConfigError,
  DEFAULT_CONFIG_PATH,
  type ConfigIssue,
  type LoadConfigOptions,
  type ParseConfigOptions,
} from './load.ts';
