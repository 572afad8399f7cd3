// tokens-node.mjs: node's tiktoken (npm, Rust compiled to WASM) on the same
// inputs as cliproxy's C tokenizer, for bench/tokens.sh. Prints lines in the
// format test_tokens prints under CPX_TOKENS_BENCH.
//
//   TIKTOKEN_DIR=/tmp/tok/node_modules node bench/tokens-node.mjs FILE RUNS WORST_RUNS
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const require = createRequire(join(process.env.TIKTOKEN_DIR || '/tmp/tok/node_modules', 'x.js'));
const [file, runs = '11', worstRuns = '1'] = process.argv.slice(2);
const text = readFileSync(file, 'utf8');
const bytes = Buffer.byteLength(text);
const worst = 'a'.repeat(100000);

const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
let t0 = performance.now();
const { get_encoding } = require('tiktoken');
for (const name of ['o200k_base', 'cl100k_base']) {
  t0 = performance.now();
  const enc = get_encoding(name);
  console.log(`load node ${name} ms=${(performance.now() - t0).toFixed(1)}`);
  let count = enc.encode_ordinary(text).length; // warm-up
  const t = [];
  for (let r = 0; r < Number(runs); r++) {
    const s = performance.now();
    count = enc.encode_ordinary(text).length;
    t.push(performance.now() - s);
  }
  const ms = median(t);
  console.log(`bench node ${name} corpus tokens=${count} bytes=${bytes} median_ms=${ms.toFixed(2)} ` +
    `tokens_per_s=${Math.round(count / (ms / 1e3))}`);
  const w = [];
  for (let r = 0; r < Number(worstRuns); r++) {
    const s = performance.now();
    count = enc.encode_ordinary(worst).length;
    w.push(performance.now() - s);
  }
  if (w.length) console.log(`bench node ${name} worst_a_100k tokens=${count} median_ms=${median(w).toFixed(2)}`);
  enc.free();
}
