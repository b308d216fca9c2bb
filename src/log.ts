// Logging with pino: JSON lines for machines, readable lines on a terminal.
import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { LogConfig } from './config/index.ts';

export type { Logger };

export function createLogger(config: LogConfig, destination: NodeJS.WritableStream = process.stdout): Logger {
  const wantPretty =
    config.format === 'pretty' ||
    (config.format === 'auto' && (destination as { isTTY?: boolean }).isTTY === true);
  const options = { level: config.level, base: undefined, name: 'chorus' };
  if (wantPretty) {
    // Synchronous pretty stream (no worker thread): start-up errors are never lost.
    return pino(
      options,
      pretty({ destination, colorize: true, translateTime: 'HH:MM:ss.l', ignore: 'name' }),
    );
  }
  return pino(options, destination);
}
