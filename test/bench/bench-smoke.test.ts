// Smoke test of the load generator (bench/): a short throughput, latency and
// MUC fan-out run against a Chorus child process on a plain-TCP (STARTTLS
// optional) listener. Only checks that messages flow and that the result JSON has its
// fields; no timing assertions.
import { expect } from 'chai';
import { readFileSync, rmSync } from 'node:fs';
import { startChorus, type ChorusProcess } from '../../bench/chorus.ts';
import { writeResult } from '../../bench/report.ts';
import { runScenario, type BenchOptions } from '../../bench/scenarios.ts';
import { freePort } from '../helpers/redis.ts';

describe('bench: load generator smoke test', function () {
  this.timeout(90_000);
  let chorus: ChorusProcess;
  let options: BenchOptions;

  before(async () => {
    const port = await freePort();
    chorus = await startChorus({ port, storage: 'memory', logLevel: 'error', muc: true });
    options = {
      host: '127.0.0.1',
      port,
      domain: 'localhost',
      pids: [chorus.pid],
      server: 'chorus-smoke',
      users: 6,
      inflight: 2,
      duration: 2,
      warmup: 0.5,
      rate: 200,
      tls: false,
      parallel: 4,
      prefix: 'smoke',
      password: 'smoke-pass',
      sourceAddrs: 1,
      quiet: true,
      occupants: 5,
      senders: 2,
    };
  });

  after(async () => {
    if (chorus) await chorus.stop();
  });

  it('throughput: delivers messages and reports the expected fields', async () => {
    const result = await runScenario('throughput', options);
    const file = writeResult(result, result.server, result.scenario);
    try {
      const json = JSON.parse(readFileSync(file, 'utf8')) as typeof result;
      expect(json.scenario).to.equal('throughput');
      expect(json.server).to.equal('chorus-smoke');
      expect(json.params).to.include.keys('users', 'inflight', 'duration');
      expect(json.metrics).to.include.keys(
        'msgs_per_s',
        'delivered',
        'server_cpu_us_per_msg',
        'client_cpu_us_per_msg',
        'undelivered',
        'out_of_order',
      );
      expect(json.metrics.delivered).to.be.a('number').greaterThan(0);
      expect(json.metrics.msgs_per_s).to.be.a('number').greaterThan(0);
      expect(json.metrics.error_messages).to.equal(0);
    } finally {
      rmSync(file, { force: true });
    }
  });

  it('latency: delivers messages and reports percentiles', async () => {
    const result = await runScenario('latency', options);
    const file = writeResult(result, result.server, result.scenario);
    try {
      const json = JSON.parse(readFileSync(file, 'utf8')) as typeof result;
      expect(json.scenario).to.equal('latency');
      expect(json.metrics).to.include.keys(
        'offered_per_s',
        'delivered_per_s',
        'p50_ms',
        'p99_ms',
        'max_ms',
        'server_cpu_us_per_msg',
      );
      expect(json.metrics.delivered_per_s).to.be.a('number').greaterThan(0);
      expect(json.metrics.p50_ms).to.be.a('number');
      expect(json.metrics.p99_ms).to.be.a('number');
    } finally {
      rmSync(file, { force: true });
    }
  });

  it('muc-fanout: creates a room, joins it and fans messages out to every occupant', async () => {
    const result = await runScenario('muc-fanout', { ...options, duration: 1.5 });
    const file = writeResult(result, result.server, result.scenario);
    try {
      const json = JSON.parse(readFileSync(file, 'utf8')) as typeof result;
      expect(json.scenario).to.equal('muc-fanout');
      expect(json.params).to.include({ occupants: 5, senders: 2, muc_domain: 'conference.localhost' });
      expect(json.metrics).to.include.keys(
        'deliveries_per_s',
        'p50_ms',
        'p99_ms',
        'max_ms',
        'server_cpu_us_per_delivery',
        'server_rss_kib',
        'client_cpu_pct',
        'undelivered',
      );
      expect(json.metrics.occupants).to.equal(5);
      expect(json.metrics.join_failures).to.equal(0);
      expect(json.metrics.delivered).to.be.a('number').greaterThan(0);
      // Every message sent reached all 5 occupants, the sender included.
      expect(json.metrics.delivered).to.be.at.least(5);
      expect(json.metrics.undelivered).to.equal(0);
      expect(json.metrics.error_messages).to.equal(0);
      expect(json.metrics.p99_ms).to.be.a('number');
    } finally {
      rmSync(file, { force: true });
    }
  });
});
