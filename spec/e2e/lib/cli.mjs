// Runs `cliproxy <args>` as a command-line user would (the login tests).
//
//   const p = runCli(['login', 'codex', '--device', ...], { stdin: 'ignore' });
//   await p.waitFor(/Open (\S+)/);   // resolves with the match once stdout has it
//   p.write('code#state\n'); p.end();
//   const { code, out, err } = await p.done;
//
// The process is killed after killMs (default 50 s) so a hung flow fails
// its test instead of the whole run.
import { spawn } from 'node:child_process';

import { BIN, SCRATCH } from './proxy.mjs';

export function runCli(args, { stdin = 'pipe', env, killMs = 50000 } = {}) {
  const child = spawn(BIN, args, { cwd: SCRATCH, stdio: [stdin, 'pipe', 'pipe'], env: env || process.env });
  let out = '';
  let err = '';
  const waiters = [];
  const check = () => {
    for (let i = waiters.length - 1; i >= 0; i--) {
      const m = out.match(waiters[i].re);
      if (m) { waiters[i].resolve(m); waiters.splice(i, 1); }
    }
  };
  child.stdout.on('data', (d) => { out += d; check(); });
  child.stderr.on('data', (d) => { err += d; });
  const killer = setTimeout(() => child.kill('SIGKILL'), killMs);
  const done = new Promise((resolve) => child.on('close', (code) => {
    clearTimeout(killer);
    for (const w of waiters) w.reject(new Error(`exited (${code}) before ${w.re}\n--- out\n${out}\n--- err\n${err}`));
    resolve({ code, out, err });
  }));
  return {
    child, done,
    out: () => out,
    write: (s) => child.stdin.write(s),
    end: () => child.stdin.end(),
    waitFor: (re) => new Promise((resolve, reject) => { waiters.push({ re, resolve, reject }); check(); }),
  };
}
