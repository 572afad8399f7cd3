// tokens-adversarial.mjs: the adversarial inputs of bench/tokens-adversarial.sh.
//
//   node bench/tokens-adversarial.mjs gen DIR BYTES     writes DIR/<name>.txt
//   TIKTOKEN_DIR=... node bench/tokens-adversarial.mjs run DIR RUNS
//       times npm tiktoken's encode_ordinary on each file; prints
//       "adv <name> <encoding> bytes=B tokens=N median_ms=M"
//
// Each input is one shape a client could send to make the tokenizer slow:
// long pre-tokens (one letter, one space run, punctuation, random letters:
// the BPE merge works on the whole run), digit runs, non-BMP runs, invalid
// UTF-8, combining marks. Generated from a fixed LCG, so both sides and
// every run see the same bytes.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const [mode, dir, arg] = process.argv.slice(2);

function gen(n) {
  let seed = 12345;
  const rnd = (m) => { seed = (seed * 1103515245 + 12345) >>> 0; return (seed >>> 8) % m; };
  const fill = (f) => { const b = Buffer.alloc(n); for (let i = 0; i < n; i++) b[i] = f(i); return b; };
  const rep = (s) => { const u = Buffer.from(s); const k = Math.floor(n / u.length); return Buffer.concat(Array(k).fill(u)); };
  return {
    one_letter: fill(() => 0x61),
    two_letters: fill((i) => (i % 2 ? 0x62 : 0x61)),
    upper: fill(() => 0x41),
    random_lower: fill(() => 0x61 + rnd(26)),
    spaces: fill(() => 0x20),
    newline_spaces: fill((i) => (i ? 0x20 : 0x0a)),
    punct: fill(() => 0x21),
    random_ascii: fill(() => 33 + rnd(94)),
    digits: fill((i) => 0x30 + (i % 10)),
    random_bytes: fill(() => rnd(256)),
    continuation_bytes: fill(() => 0x80 + rnd(64)),
    emoji: rep('\u{1F600}'),
    cjk_ext_b: rep('\u{20000}'),
    cyrillic: rep('\u0430'),
    combining: rep('\u0300'),
  };
}

if (mode === 'gen') {
  mkdirSync(dir, { recursive: true });
  for (const [k, v] of Object.entries(gen(Number(arg)))) writeFileSync(join(dir, `${k}.txt`), v);
} else if (mode === 'run') {
  const require = createRequire(join(process.env.TIKTOKEN_DIR || '/tmp/tok/node_modules', 'x.js'));
  const { get_encoding } = require('tiktoken');
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const files = readdirSync(dir).filter((f) => f.endsWith('.txt')).sort();
  for (const name of ['o200k_base', 'cl100k_base']) {
    const enc = get_encoding(name);
    for (const f of files) {
      // tiktoken decodes JS strings: invalid UTF-8 becomes U+FFFD, as
      // cliproxy replaces it, so the counts stay comparable.
      const text = readFileSync(join(dir, f)).toString('utf8');
      let count = 0;
      const t = [];
      for (let r = 0; r < Number(arg); r++) {
        const s = performance.now();
        count = enc.encode_ordinary(text).length;
        t.push(performance.now() - s);
      }
      console.log(`adv ${f.replace(/\.txt$/, '')} ${name} bytes=${readFileSync(join(dir, f)).length} tokens=${count} median_ms=${median(t).toFixed(3)}`);
    }
    enc.free();
  }
} else {
  console.error('usage: tokens-adversarial.mjs gen DIR BYTES | run DIR RUNS');
  process.exit(2);
}
