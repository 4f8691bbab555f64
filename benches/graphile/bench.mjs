// graphile-worker side of `cargo xtask bench hub`: the same claim-and-complete work as the
// hub's PostgreSQL store benchmark (N no-op jobs queued up front, K concurrent workers
// claim and complete them), on the same PostgreSQL server. Prints one JSON line.
//
// Env: DATABASE_URL (a database this run may fill), JOBS (default 20000), CONCURRENCY
// (default 8). Bounded: gives up after TIMEOUT_SECS (default 300).
import { run, makeWorkerUtils } from 'graphile-worker';

const connectionString = process.env.DATABASE_URL;
const jobs = Number(process.env.JOBS || 20000);
const concurrency = Number(process.env.CONCURRENCY || 8);
const timeoutSecs = Number(process.env.TIMEOUT_SECS || 300);
if (!connectionString) throw new Error('set DATABASE_URL');




const utils = await makeWorkerUtils({ connectionString });
await utils.migrate();
// Queue everything first (not timed), in batches, through graphile's own add_jobs.
await utils.withPgClient(async (client) => {
  for (let from = 0; from < jobs; from += 5000) {
    const count = Math.min(5000, jobs - from);
    await client.query(
      `select count(*) from graphile_worker.add_jobs(array(
         select row('noop', json_build_object('n', g), null, null, null, null, null, null)::graphile_worker.job_spec
         from generate_series($1::int, $2::int) g))`,
      [from, from + count - 1],
    );
  }
});
await utils.release();

let done = 0;
let finish;
const finished = new Promise((resolve) => { finish = resolve; });
const started = performance.now();
const runner = await run({
  connectionString,
  concurrency,
  noHandleSignals: true,
  pollInterval: 1000,
  logger: new (await import('graphile-worker')).Logger(() => () => {}),
  taskList: { noop: async () => {} },
});
runner.events.on('job:success', () => {
  done += 1;
  if (done === jobs) finish();
});
const timer = setTimeout(finish, timeoutSecs * 1000);
await finished;
const elapsed = (performance.now() - started) / 1000;
clearTimeout(timer);
await runner.stop();
console.log(JSON.stringify({ engine: 'graphile-worker', version: '0.16.6', jobs, completed: done, concurrency, elapsed_secs: elapsed, jobs_per_sec: done / elapsed }));
if (done !== jobs) process.exit(1);

