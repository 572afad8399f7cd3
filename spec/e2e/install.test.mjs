// Packaging: `cmake --install` gives a binary that finds its Lua modules and
// rank files with no flags, from any directory; the systemd unit verifies;
// the container builds where a container engine runs (skipped elsewhere), and
// everywhere the Dockerfile's build stage is replayed without an engine: only
// the files it COPYs, its own cmake commands, and the final stage's COPYs
// checked against what that build installed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { BIN, ROOT, freePort, healthz } from './lib/proxy.mjs';

const T = (ms = 60000) => ({ timeout: ms });
let prefix;
before(() => {
  prefix = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-install-'));
  const r = spawnSync('cmake', ['--install', path.dirname(BIN), '--prefix', prefix], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});
after(() => { fs.rmSync(prefix, { recursive: true, force: true }); });

const installed = () => path.join(prefix, 'bin', 'cliproxy');

test('the installed binary finds lua/ and the rank files under its prefix, from any directory', T(), async () => {
  const share = path.join(prefix, 'share', 'cliproxy');
  for (const f of ['lua/rt/boot.lua', 'data/o200k_base.tiktoken', 'config.example.yaml', 'cliproxy.service']) {
    assert.ok(fs.existsSync(path.join(share, f)), f);
  }
  const cwd = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-cwd-'));
  try {
    const env = { ...process.env };
    delete env.CPX_LUA_DIR;
    const check = spawnSync(installed(), ['check', '-config', path.join(share, 'config.example.yaml')],
      { cwd, env, encoding: 'utf8' });
    assert.equal(check.status, 0, check.stderr);
    assert.match(check.stdout, new RegExp(`lua: ${share.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/lua`));
    const tok = spawnSync(installed(), ['tokens', '--encoding', 'o200k_base'], { cwd, env, input: 'hello world', encoding: 'utf8' });
    assert.equal(tok.status, 0, tok.stderr);
    assert.equal(tok.stdout.trim(), '2');
    // and it serves
    const port = await freePort();
    const cfg = path.join(cwd, 'config.yaml');
    fs.writeFileSync(cfg, `host: "127.0.0.1"\nport: ${port}\nauth-dir: "${cwd}/auths"\n`);
    const child = spawn(installed(), ['-config', cfg], { cwd, env, stdio: 'ignore' });
    try {
      let h = { status: 0 };
      for (let i = 0; i < 100 && h.status !== 200; i++) {
        h = await healthz(`http://127.0.0.1:${port}`);
        if (h.status !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      assert.equal(h.status, 200, h.text);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.on('exit', r));
    }
  } finally {
    fs.rmSync(cwd, { recursive: true, force: true });
  }
});

test('the systemd unit passes systemd-analyze verify', T(), (t) => {
  const which = spawnSync('sh', ['-c', 'command -v systemd-analyze']);
  if (which.status !== 0) { t.skip('systemd-analyze is not installed'); return; }
  const unit = fs.readFileSync(path.join(ROOT, 'examples/deploy/cliproxy.service'), 'utf8')
    .replaceAll('/usr/bin/cliproxy', installed());
  const p = path.join(prefix, 'cliproxy.service');
  fs.writeFileSync(p, unit);
  const r = spawnSync('systemd-analyze', ['verify', p], { encoding: 'utf8' });
  // verify exits 0 on unknown keys and bad values too: any output is a finding
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr.trim(), '', r.stderr);
  for (const k of ['NoNewPrivileges=yes', 'ProtectSystem=strict', 'ProtectHome=yes', 'User=cliproxy']) {
    assert.ok(unit.includes(k), k);
  }
});

test('the container image builds and becomes healthy', T(900000), async (t) => {
  const info = spawnSync('docker', ['info'], { encoding: 'utf8' });
  if (info.error || info.status !== 0) {
    t.skip('no container engine answers `docker info` here: the Dockerfile is not built');
    return;
  }
  const tag = `cliproxy-test:${process.pid}`;
  const b = spawnSync('docker', ['build', '-t', tag, ROOT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  assert.equal(b.status, 0, b.stderr);
  const run = spawnSync('docker', ['run', '-d', '--rm', tag], { encoding: 'utf8' });
  assert.equal(run.status, 0, run.stderr);
  const id = run.stdout.trim();
  try {
    let health = '';
    for (let i = 0; i < 60 && health !== 'healthy'; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      health = spawnSync('docker', ['inspect', '-f', '{{.State.Health.Status}}', id], { encoding: 'utf8' }).stdout.trim();
    }
    assert.equal(health, 'healthy');
    const user = spawnSync('docker', ['exec', id, 'id', '-u'], { encoding: 'utf8' }).stdout.trim();
    assert.notEqual(user, '0');
  } finally {
    spawnSync('docker', ['rm', '-f', id]);
    spawnSync('docker', ['rmi', tag]);
  }
});

// The Dockerfile as data: stages with their WORKDIR, COPY and RUN lines.
function dockerStages(text) {
  const lines = text.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const stages = [];
  for (const l of lines) {
    const m = l.match(/^(\w+)\s+(.*)$/);
    if (!m) continue;
    const [, op, arg] = [m[0], m[1].toUpperCase(), m[2]];
    if (op === 'FROM') { stages.push({ from: arg, workdir: '/', copies: [], runs: [] }); continue; }
    const st = stages.at(-1);
    if (op === 'WORKDIR') st.workdir = arg;
    if (op === 'RUN') st.runs.push(arg);
    if (op === 'COPY') {
      const parts = arg.split(/\s+/);
      const from = parts[0].startsWith('--from=') ? parts.shift().slice(7) : null;
      st.copies.push({ from, src: parts.slice(0, -1), dest: parts.at(-1) });
    }
  }
  return stages;
}

test('the Dockerfile\'s build stage, replayed without an engine, installs everything the final stage copies', T(600000), () => {
  const stages = dockerStages(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));
  assert.equal(stages.length, 2, 'a build stage and a runtime stage');
  const [build, final] = stages;
  const ctx = fs.mkdtempSync(path.join(os.tmpdir(), 'cpx-docker-'));
  try {
    const src = path.join(ctx, 'src');
    fs.mkdirSync(src);
    for (const c of build.copies) {
      assert.equal(c.from, null);
      for (const s of c.src) {
        const to = c.dest.endsWith('/') ? path.join(src, c.dest, path.basename(s)) : path.join(src, c.dest);
        fs.cpSync(path.join(ROOT, s), to, { recursive: true });
      }
    }
    // The build stage's cmake commands as written, with the context in /src
    // and the install tree in /out moved under the temporary directory.
    const cmake = build.runs.find((r) => /^cmake\s/.test(r));
    assert.ok(cmake, 'the build stage runs cmake');
    const out = path.join(ctx, 'out');
    const cmd = cmake.replaceAll('$(nproc)', '2').replace(/DESTDIR=\/out/g, `DESTDIR=${out}`);
    const r = spawnSync('sh', ['-c', cmd], { cwd: src, encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.equal(r.status, 0, `${cmd}\n${(r.stdout + r.stderr).slice(-4000)}`);
    // what the runtime stage takes from the build and from the context
    for (const c of final.copies) {
      for (const s of c.src) {
        const p = c.from === 'build' ? path.join(ctx, s) : path.join(ROOT, s);
        assert.ok(fs.existsSync(p), `COPY ${c.from ? '--from=' + c.from + ' ' : ''}${s}: missing`);
      }
    }
    const share = path.join(out, 'usr/share/cliproxy');
    for (const f of ['lua/rt/boot.lua', 'data/o200k_base.tiktoken', 'panel/management.html']) {
      assert.ok(fs.existsSync(path.join(share, f)), `installed ${f}`);
    }
    // Every library the binary links directly comes from a package the
    // runtime stage installs, or from one every Debian system has.
    const bin = path.join(out, 'usr/bin/cliproxy');
    const needed = [...spawnSync('objdump', ['-p', bin], { encoding: 'utf8' }).stdout
      .matchAll(/NEEDED\s+(\S+)/g)].map((m) => m[1]);
    assert.ok(needed.length > 3, 'objdump lists the libraries');
    const where = new Map([...spawnSync('ldd', [bin], { encoding: 'utf8' }).stdout
      .matchAll(/^\s*(\S+) => (\S+)/gm)].map((m) => [m[1], m[2]]));
    const apt = final.runs.join(' ').match(/apt-get install ([^&]*)/)[1].split(/\s+/).filter((w) => w && !w.startsWith('-'));
    // a base system: Essential packages, priority required, and what they depend on
    const base = new Set();
    for (const line of spawnSync('dpkg-query', ['-W', '-f=${Package}\t${Essential}\t${Priority}\t${Pre-Depends}, ${Depends}\n'],
      { encoding: 'utf8', maxBuffer: 64 << 20 }).stdout.split('\n')) {
      const [pkg, ess, prio, deps = ''] = line.split('\t');
      if (ess !== 'yes' && prio !== 'required') continue;
      base.add(pkg);
      for (const d of deps.split(/[,|]/)) { const n = d.trim().split(/[\s:(]/)[0]; if (n) base.add(n); }
    }
    for (const lib of needed.filter((l) => !l.startsWith('ld-linux'))) { // the loader is libc6's
      assert.ok(where.has(lib), `ldd does not resolve ${lib}`);
      const real = fs.realpathSync(where.get(lib));
      let owner = spawnSync('dpkg', ['-S', real], { encoding: 'utf8' });
      if (owner.status !== 0) owner = spawnSync('dpkg', ['-S', real.replace(/^\/usr\/lib\//, '/lib/')], { encoding: 'utf8' });
      assert.equal(owner.status, 0, `no package owns ${real}`);
      const pkg = owner.stdout.split(':')[0];
      assert.ok(apt.includes(pkg) || base.has(pkg), `${lib} is in ${pkg}, which the runtime stage does not install`);
    }
    // the image's default config passes the image's own binary's check
    const env = { ...process.env };
    delete env.CPX_LUA_DIR;
    const check = spawnSync(path.join(out, 'usr/bin/cliproxy'),
      ['check', '-config', path.join(ROOT, 'examples/deploy/config.container.yaml')], { env, encoding: 'utf8' });
    assert.equal(check.status, 0, check.stdout + check.stderr);
  } finally {
    fs.rmSync(ctx, { recursive: true, force: true });
  }
});
