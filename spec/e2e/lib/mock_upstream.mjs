// An in-process mock upstream that speaks the four wire formats cliproxy
// talks to: OpenAI Chat Completions, OpenAI Responses, Anthropic Messages and
// Gemini generateContent. Tests script what it answers and read back what it
// received.
//
//   const mock = await startMock();
//   mock.reply({ text: 'Hello there' });            // sticky: every request
//   mock.once({ error: { status: 500 } });          // queued: the next request only
//   mock.reply(req => ({ text: `you sent ${req.model}` }));
//   ... mock.requests[0].headers.authorization, mock.requests[0].body.model
//   await mock.waitForClose(mock.requests[0], 2000);
//   await mock.close();
//
// Routes (any prefix before them, so base URLs like /v1 or /api/v1 work):
//   POST …/chat/completions                            OpenAI chat (body.stream)
//   POST …/responses, …/responses/compact               OpenAI Responses (body.stream)
//   POST …/messages, …/messages/count_tokens            Anthropic Messages (body.stream)
//   POST …/models/{m}:generateContent                   Gemini
//   POST …/models/{m}:streamGenerateContent[?alt=sse]    Gemini stream: SSE with CRLF CRLF
//                                                       frames, or without alt a JSON array
//   POST …/models/{m}:countTokens                       Gemini count
//   GET  …/models                                       OpenAI model list
//
// A reply spec (all fields optional; a function (req) => spec is accepted too):
//   text        assistant text; chunks: number of stream pieces or an explicit array
//   thinking    reasoning text (OpenAI chat: reasoning_content; Responses: reasoning
//               summary; Claude: thinking block with signature; Gemini: thought part)
//   signature   thinking signature (Claude) / thoughtSignature (Gemini)
//   tools       [{ id?, name, args: object|string }]  more than one = parallel calls;
//               arguments stream in argChunks (default 3) deltas; interleave: true mixes
//               the deltas of parallel calls (OpenAI chat)
//   usage       { input, output, reasoning, cached }
//   stop        finish reason override in the upstream's own vocabulary
//   status, headers   HTTP status (default 200) and extra response headers
//   delayMs     wait before the status line; eventDelayMs: wait between stream frames
//   error       { status, message, type, code, headers, body }: an error response in the
//               format's envelope (body overrides the envelope, verbatim)
//   cutAfter    stream: destroy the socket after n frames; non-stream: after half the body
//   errorAfter  stream: after n frames send the format's in-band error event and end
//   hold, holdAfter   stream: after holdAfter frames (default 1) wait for the promise
//               hold before the rest (a test keeps streams open until it lets them go)
//   endless     { intervalMs = 5, bytes = 32, burstBytes = 0, maxMs = 60000 }: stream text
//               deltas of `bytes` chars forever (bounded by maxMs) until the connection
//               closes; each tick writes one frame, or frames up to burstBytes; honours
//               backpressure (waits for 'drain')
//   raw         { status, headers, body }: written as is
//
// Records: mock.requests[] = { n, t, method, url, path, query, headers, rawHeaders,
//   rawBody, body, format, stream, model, connId, status, firstByteAt, finishedAt,
//   abortedAt, closedAt, bytesOut, framesOut, writeStalls }
// mock.conns (Map id -> { id, openedAt, closedAt, remotePort, requests: [n...] }).
// Times are performance.now() values, comparable with performance.now() in tests.

import http from 'node:http';
import { performance } from 'node:perf_hooks';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();
const unix = () => Math.floor(Date.now() / 1000);

// ---------------------------------------------------------------- helpers

function splitText(text, chunks) {
  if (Array.isArray(chunks)) return chunks;
  if (!text) return [];
  if (typeof chunks === 'number' && chunks > 0) {
    const size = Math.ceil(text.length / chunks);
    const out = [];
    for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size));
    return out;
  }
  return text.match(/\s*\S+\s*/g) || [text]; // word pieces keeping their spaces
}

function splitN(s, n) {
  if (!s) return [''];
  n = Math.max(1, Math.min(n, s.length));
  const size = Math.ceil(s.length / n);
  const out = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out;
}

function normalise(spec, req, seq) {
  const r = { ...spec };
  r.text = r.text ?? (r.tools || r.error || r.endless || r.raw ? '' : 'Hello from the mock upstream.');
  r.tools = (r.tools || []).map((t, i) => ({
    id: t.id ?? `call_mock_${seq}_${i}`,
    name: t.name,
    argsText: typeof t.args === 'string' ? t.args : JSON.stringify(t.args ?? {}),
    argsObj: typeof t.args === 'string' ? JSON.parse(t.args || '{}') : (t.args ?? {}),
  }));
  const u = r.usage || {};
  r.usage = {
    input: u.input ?? 11,
    output: u.output ?? 7,
    reasoning: u.reasoning ?? (r.thinking ? 5 : 0),
    cached: u.cached ?? 0,
  };
  r.signature = r.signature ?? (r.thinking ? `sig-mock-${seq}` : undefined);
  r.pieces = splitText(r.text, r.chunks);
  r.thinkPieces = splitText(r.thinking || '', r.thinkingChunks);
  r.model = req.model || 'mock-model';
  r.seq = seq;
  return r;
}

const OPENAI_ERR = {
  400: ['invalid_request_error', null], 401: ['authentication_error', 'invalid_api_key'],
  403: ['permission_error', 'insufficient_quota'], 404: ['invalid_request_error', 'model_not_found'],
  429: ['rate_limit_error', 'rate_limit_exceeded'],
};
const CLAUDE_ERR = {
  400: 'invalid_request_error', 401: 'authentication_error', 403: 'permission_error',
  404: 'not_found_error', 413: 'request_too_large', 429: 'rate_limit_error', 529: 'overloaded_error',
};
const GEMINI_ERR = {
  400: 'INVALID_ARGUMENT', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND',
  429: 'RESOURCE_EXHAUSTED', 500: 'INTERNAL', 503: 'UNAVAILABLE', 504: 'DEADLINE_EXCEEDED',
};

export function errorBody(format, status, message, type, code) {
  message = message ?? `mock upstream error ${status}`;
  switch (format) {
    case 'claude':
      return { type: 'error', error: { type: type ?? CLAUDE_ERR[status] ?? (status >= 500 ? 'api_error' : 'invalid_request_error'), message }, request_id: 'req_mock' };
    case 'gemini':
      return { error: { code: status, message, status: type ?? GEMINI_ERR[status] ?? (status >= 500 ? 'INTERNAL' : 'FAILED_PRECONDITION') } };
    default: {
      const [t, c] = OPENAI_ERR[status] ?? (status >= 500 ? ['server_error', 'internal_server_error'] : ['invalid_request_error', null]);
      return { error: { message, type: type ?? t, param: null, code: code === undefined ? c : code } };
    }
  }
}

// ------------------------------------------------------ OpenAI Chat Completions

const chat = {
  body(r) {
    const message = { role: 'assistant', content: r.tools.length && !r.text ? null : r.text, refusal: null, annotations: [] };
    if (r.thinking) message.reasoning_content = r.thinking;
    if (r.tools.length) message.tool_calls = r.tools.map((t) => ({ id: t.id, type: 'function', function: { name: t.name, arguments: t.argsText } }));
    return {
      id: `chatcmpl-mock-${r.seq}`, object: 'chat.completion', created: unix(), model: r.model,
      choices: [{ index: 0, message, logprobs: null, finish_reason: r.stop ?? (r.tools.length ? 'tool_calls' : 'stop') }],
      usage: chat.usage(r), service_tier: 'default', system_fingerprint: 'fp_mock',
    };
  },
  usage(r) {
    const u = r.usage;
    return {
      prompt_tokens: u.input, completion_tokens: u.output, total_tokens: u.input + u.output,
      prompt_tokens_details: { cached_tokens: u.cached, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: u.reasoning, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
    };
  },
  chunk(r, choice, usage) {
    const c = { id: `chatcmpl-mock-${r.seq}`, object: 'chat.completion.chunk', created: r.created ?? (r.created = unix()), model: r.model, service_tier: 'default', system_fingerprint: 'fp_mock', choices: choice ? [choice] : [] };
    if (r.includeUsage) c.usage = usage ?? null;
    return `data: ${JSON.stringify(c)}\n\n`;
  },
  delta(r, delta, finish = null) {
    return chat.chunk(r, { index: 0, delta, logprobs: null, finish_reason: finish });
  },
  *frames(r) {
    yield chat.delta(r, { role: 'assistant', content: '', refusal: null });
    for (const p of r.thinkPieces) yield chat.delta(r, { reasoning_content: p });
    for (const p of r.pieces) yield chat.delta(r, { content: p });
    const n = r.argChunks ?? 3;
    const parts = r.tools.map((t) => splitN(t.argsText, n));
    const head = (t, i) => ({ index: i, id: t.id, type: 'function', function: { name: t.name, arguments: '' } });
    if (r.interleave) {
      for (let i = 0; i < r.tools.length; i++) yield chat.delta(r, { tool_calls: [head(r.tools[i], i)] });
      for (let k = 0; k < n; k++)
        for (let i = 0; i < r.tools.length; i++)
          if (parts[i][k] !== undefined) yield chat.delta(r, { tool_calls: [{ index: i, function: { arguments: parts[i][k] } }] });
    } else {
      for (let i = 0; i < r.tools.length; i++) {
        yield chat.delta(r, { tool_calls: [head(r.tools[i], i)] });
        for (const a of parts[i]) yield chat.delta(r, { tool_calls: [{ index: i, function: { arguments: a } }] });
      }
    }
    yield chat.delta(r, {}, r.stop ?? (r.tools.length ? 'tool_calls' : 'stop'));
    if (r.includeUsage) yield chat.chunk(r, null, chat.usage(r));
    yield 'data: [DONE]\n\n';
  },
  endlessFrame(r, text) { return chat.delta(r, { content: text }); },
  streamError(r, e) { return `data: ${JSON.stringify(errorBody('openai', e.status ?? 500, e.message, e.type, e.code))}\n\n`; },
};

// ------------------------------------------------------------ OpenAI Responses

const responses = {
  items(r) {
    const out = [];
    if (r.thinking) out.push({ id: `rs_mock_${r.seq}`, type: 'reasoning', summary: [{ type: 'summary_text', text: r.thinking }], ...(r.signature ? { encrypted_content: r.signature } : {}) });
    if (r.text) out.push({ id: `msg_mock_${r.seq}`, type: 'message', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: r.text, annotations: [], logprobs: [] }] });
    r.tools.forEach((t, i) => out.push({ id: `fc_mock_${r.seq}_${i}`, type: 'function_call', status: 'completed', arguments: t.argsText, call_id: t.id, name: t.name }));
    return out;
  },
  response(r, status, output) {
    const u = r.usage;
    const q = r.reqBody || {};
    return {
      id: `resp_mock_${r.seq}`, object: 'response', created_at: r.created ?? (r.created = unix()), status,
      background: false, error: null, incomplete_details: null, instructions: q.instructions ?? null,
      max_output_tokens: q.max_output_tokens ?? null, model: r.model, output,
      parallel_tool_calls: q.parallel_tool_calls ?? true, previous_response_id: q.previous_response_id ?? null,
      reasoning: { effort: q.reasoning?.effort ?? null, summary: q.reasoning?.summary ?? null },
      store: q.store ?? false, temperature: q.temperature ?? 1, text: q.text ?? { format: { type: 'text' } },
      tool_choice: q.tool_choice ?? 'auto', tools: q.tools ?? [], top_p: q.top_p ?? 1, truncation: 'disabled',
      usage: status === 'completed' ? {
        input_tokens: u.input, input_tokens_details: { cached_tokens: u.cached },
        output_tokens: u.output, output_tokens_details: { reasoning_tokens: u.reasoning }, total_tokens: u.input + u.output,
      } : null,
      user: q.user ?? null, metadata: q.metadata ?? {},
    };
  },
  body(r) { return responses.response(r, 'completed', responses.items(r)); },
  ev(r, type, data) {
    r.sn = (r.sn ?? -1) + 1;
    return `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: r.sn, ...data })}\n\n`;
  },
  *frames(r) {
    yield responses.ev(r, 'response.created', { response: responses.response(r, 'in_progress', []) });
    yield responses.ev(r, 'response.in_progress', { response: responses.response(r, 'in_progress', []) });
    const done = responses.items(r);
    let oi = 0;
    if (r.thinking) {
      const item = done[oi];
      yield responses.ev(r, 'response.output_item.added', { output_index: oi, item: { ...item, summary: [] } });
      yield responses.ev(r, 'response.reasoning_summary_part.added', { item_id: item.id, output_index: oi, summary_index: 0, part: { type: 'summary_text', text: '' } });
      for (const p of r.thinkPieces) yield responses.ev(r, 'response.reasoning_summary_text.delta', { item_id: item.id, output_index: oi, summary_index: 0, delta: p });
      yield responses.ev(r, 'response.reasoning_summary_text.done', { item_id: item.id, output_index: oi, summary_index: 0, text: r.thinking });
      yield responses.ev(r, 'response.reasoning_summary_part.done', { item_id: item.id, output_index: oi, summary_index: 0, part: { type: 'summary_text', text: r.thinking } });
      yield responses.ev(r, 'response.output_item.done', { output_index: oi, item });
      oi++;
    }
    if (r.text) {
      const item = done[oi];
      yield responses.ev(r, 'response.output_item.added', { output_index: oi, item: { ...item, status: 'in_progress', content: [] } });
      yield responses.ev(r, 'response.content_part.added', { item_id: item.id, output_index: oi, content_index: 0, part: { type: 'output_text', text: '', annotations: [], logprobs: [] } });
      for (const p of r.pieces) yield responses.ev(r, 'response.output_text.delta', { item_id: item.id, output_index: oi, content_index: 0, delta: p, logprobs: [] });
      yield responses.ev(r, 'response.output_text.done', { item_id: item.id, output_index: oi, content_index: 0, text: r.text, logprobs: [] });
      yield responses.ev(r, 'response.content_part.done', { item_id: item.id, output_index: oi, content_index: 0, part: item.content[0] });
      yield responses.ev(r, 'response.output_item.done', { output_index: oi, item });
      oi++;
    }
    for (const t of r.tools) {
      const item = done[oi];
      yield responses.ev(r, 'response.output_item.added', { output_index: oi, item: { ...item, status: 'in_progress', arguments: '' } });
      for (const a of splitN(t.argsText, r.argChunks ?? 3)) yield responses.ev(r, 'response.function_call_arguments.delta', { item_id: item.id, output_index: oi, delta: a });
      yield responses.ev(r, 'response.function_call_arguments.done', { item_id: item.id, output_index: oi, arguments: t.argsText });
      yield responses.ev(r, 'response.output_item.done', { output_index: oi, item });
      oi++;
    }
    yield responses.ev(r, 'response.completed', { response: responses.response(r, 'completed', done) });
  },
  endlessFrame(r, text) {
    return responses.ev(r, 'response.output_text.delta', { item_id: `msg_mock_${r.seq}`, output_index: 0, content_index: 0, delta: text, logprobs: [] });
  },
  *endlessHead(r) {
    yield responses.ev(r, 'response.created', { response: responses.response(r, 'in_progress', []) });
    yield responses.ev(r, 'response.output_item.added', { output_index: 0, item: { id: `msg_mock_${r.seq}`, type: 'message', status: 'in_progress', role: 'assistant', content: [] } });
    yield responses.ev(r, 'response.content_part.added', { item_id: `msg_mock_${r.seq}`, output_index: 0, content_index: 0, part: { type: 'output_text', text: '', annotations: [], logprobs: [] } });
  },
  streamError(r, e) {
    const resp = { ...responses.response(r, 'failed', []), error: { code: e.code ?? 'server_error', message: e.message ?? 'mock upstream failure' } };
    return responses.ev(r, 'response.failed', { response: resp });
  },
};

// ---------------------------------------------------------- Anthropic Messages

const claude = {
  usage(r, final) {
    const u = r.usage;
    return { input_tokens: u.input, cache_creation_input_tokens: 0, cache_read_input_tokens: u.cached, output_tokens: final ? u.output : 1, service_tier: 'standard' };
  },
  stopReason(r) { return r.stop ?? (r.tools.length ? 'tool_use' : 'end_turn'); },
  body(r) {
    const content = [];
    if (r.thinking) content.push({ type: 'thinking', thinking: r.thinking, signature: r.signature });
    if (r.text) content.push({ type: 'text', text: r.text });
    for (const t of r.tools) content.push({ type: 'tool_use', id: t.id, name: t.name, input: t.argsObj });
    return { id: `msg_mock_${r.seq}`, type: 'message', role: 'assistant', model: r.model, content, stop_reason: claude.stopReason(r), stop_sequence: null, usage: claude.usage(r, true) };
  },
  ev(type, data) { return `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`; },
  start(r) {
    return claude.ev('message_start', { message: { id: `msg_mock_${r.seq}`, type: 'message', role: 'assistant', model: r.model, content: [], stop_reason: null, stop_sequence: null, usage: claude.usage(r, false) } });
  },
  *frames(r) {
    yield claude.start(r);
    yield claude.ev('ping', {});
    let i = 0;
    if (r.thinking) {
      yield claude.ev('content_block_start', { index: i, content_block: { type: 'thinking', thinking: '', signature: '' } });
      for (const p of r.thinkPieces) yield claude.ev('content_block_delta', { index: i, delta: { type: 'thinking_delta', thinking: p } });
      yield claude.ev('content_block_delta', { index: i, delta: { type: 'signature_delta', signature: r.signature } });
      yield claude.ev('content_block_stop', { index: i++ });
    }
    if (r.text) {
      yield claude.ev('content_block_start', { index: i, content_block: { type: 'text', text: '' } });
      for (const p of r.pieces) yield claude.ev('content_block_delta', { index: i, delta: { type: 'text_delta', text: p } });
      yield claude.ev('content_block_stop', { index: i++ });
    }
    for (const t of r.tools) {
      yield claude.ev('content_block_start', { index: i, content_block: { type: 'tool_use', id: t.id, name: t.name, input: {} } });
      for (const a of splitN(t.argsText, r.argChunks ?? 3)) yield claude.ev('content_block_delta', { index: i, delta: { type: 'input_json_delta', partial_json: a } });
      yield claude.ev('content_block_stop', { index: i++ });
    }
    yield claude.ev('message_delta', { delta: { stop_reason: claude.stopReason(r), stop_sequence: null }, usage: { output_tokens: r.usage.output } });
    yield claude.ev('message_stop', {});
  },
  *endlessHead(r) {
    yield claude.start(r);
    yield claude.ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } });
  },
  endlessFrame(r, text) { return claude.ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text } }); },
  streamError(r, e) {
    const b = errorBody('claude', e.status ?? 529, e.message ?? 'Overloaded', e.type);
    return `event: error\ndata: ${JSON.stringify({ type: 'error', error: b.error })}\n\n`;
  },
};

// ----------------------------------------------------------------------- Gemini

const gemini = {
  usage(r, final) {
    const u = r.usage;
    const m = { promptTokenCount: u.input, totalTokenCount: u.input + (final ? u.output : 0), promptTokensDetails: [{ modality: 'TEXT', tokenCount: u.input }] };
    if (final) m.candidatesTokenCount = u.output - u.reasoning;
    if (final && u.reasoning) m.thoughtsTokenCount = u.reasoning;
    if (u.cached) m.cachedContentTokenCount = u.cached;
    return m;
  },
  call(r, t, i) {
    const part = { functionCall: { name: t.name, args: t.argsObj } };
    if (r.geminiCallIds) part.functionCall.id = t.id;
    if (i === 0 && r.signature && !r.thinking) part.thoughtSignature = r.signature;
    return part;
  },
  resp(r, parts, finish, final) {
    const cand = { content: { role: 'model', parts }, index: 0 };
    if (finish) cand.finishReason = finish;
    return { candidates: [cand], usageMetadata: gemini.usage(r, final), modelVersion: r.model, responseId: `resp-mock-${r.seq}` };
  },
  body(r) {
    const parts = [];
    if (r.thinking) parts.push({ text: r.thinking, thought: true, ...(r.signature ? { thoughtSignature: r.signature } : {}) });
    if (r.text) parts.push({ text: r.text });
    r.tools.forEach((t, i) => parts.push(gemini.call(r, t, i)));
    return gemini.resp(r, parts, r.stop ?? 'STOP', true);
  },
  *objects(r) {
    const ps = r.thinkPieces;
    for (let k = 0; k < ps.length; k++) {
      const part = { text: ps[k], thought: true };
      if (k === ps.length - 1 && r.signature) part.thoughtSignature = r.signature;
      yield gemini.resp(r, [part], null, false);
    }
    const last = r.tools.length ? -1 : r.pieces.length - 1;
    for (let k = 0; k < r.pieces.length; k++)
      yield gemini.resp(r, [{ text: r.pieces[k] }], k === last ? (r.stop ?? 'STOP') : null, k === last);
    if (r.tools.length) yield gemini.resp(r, r.tools.map((t, i) => gemini.call(r, t, i)), r.stop ?? 'STOP', true);
    if (!r.pieces.length && !r.tools.length) yield gemini.resp(r, [{ text: '' }], r.stop ?? 'STOP', true);
  },
  // SSE frames end with CRLF CRLF, as Google sends them; the JSON-array form is
  // "[" obj ",\r\n" obj ... "]".
  frame(r, obj, k) {
    if (r.alt === 'sse') return `data: ${JSON.stringify(obj)}\r\n\r\n`;
    return (k === 0 ? '[' : ',\r\n') + JSON.stringify(obj);
  },
  *frames(r) {
    let k = 0;
    for (const o of gemini.objects(r)) yield gemini.frame(r, o, k++);
    if (r.alt !== 'sse') yield k === 0 ? '[]' : ']';
  },
  *endlessHead() {},
  endlessFrame(r, text) {
    const s = gemini.frame(r, gemini.resp(r, [{ text }], null, false), r.k ?? 0);
    r.k = (r.k ?? 0) + 1;
    return s;
  },
  streamError(r, e) {
    const b = errorBody('gemini', e.status ?? 500, e.message);
    return r.alt === 'sse' ? `data: ${JSON.stringify(b)}\r\n\r\n` : `,\r\n${JSON.stringify(b)}]`;
  },
};

chat.endlessHead = function* (r) { yield chat.delta(r, { role: 'assistant', content: '' }); };

export const FORMATS = { openai: chat, responses, claude, gemini };

function route(method, path) {
  let m;
  if (method === 'GET' && /\/models\/?$/.test(path)) return { kind: 'models' };
  if (method !== 'POST') return null;
  if (/\/chat\/completions$/.test(path)) return { kind: 'gen', format: 'openai' };
  if (/\/responses(\/compact)?$/.test(path)) return { kind: 'gen', format: 'responses' };
  if (/\/messages\/count_tokens$/.test(path)) return { kind: 'count', format: 'claude' };
  if (/\/messages$/.test(path)) return { kind: 'gen', format: 'claude' };
  if ((m = path.match(/\/models\/([^/:]+):(generateContent|streamGenerateContent|countTokens)$/))) {
    const model = decodeURIComponent(m[1]);
    if (m[2] === 'countTokens') return { kind: 'count', format: 'gemini', model };
    return { kind: 'gen', format: 'gemini', model, stream: m[2] === 'streamGenerateContent' };
  }
  return null;
}

// ---------------------------------------------------------------- the server

export async function startMock({ host = '127.0.0.1', port = 0, models = ['mock-model'] } = {}) {
  const mock = {
    requests: [],
    conns: new Map(),
    models,
    _queue: [],
    _default: null,
    _seq: 0,
    _servers: new Set(),
    reply(spec) { this._default = spec; return this; },
    once(spec) { this._queue.push(spec); return this; },
    reset() { this._queue = []; this._default = null; this.requests.length = 0; return this; },
    last() { return this.requests[this.requests.length - 1]; },
    async waitFor(pred, timeoutMs = 5000, what = 'condition') {
      const end = now() + timeoutMs;
      for (;;) {
        const v = pred();
        if (v) return v;
        if (now() > end) throw new Error(`mock: timed out after ${timeoutMs} ms waiting for ${what}`);
        await sleep(5);
      }
    },
    waitForRequest(pred = () => true, timeoutMs = 5000) {
      return this.waitFor(() => this.requests.find(pred), timeoutMs, 'a matching request');
    },
    // Resolves when the request's response was aborted or its connection closed.
    waitForClose(rec, timeoutMs = 5000) {
      return this.waitFor(() => rec.abortedAt ?? rec.closedAt, timeoutMs, `request #${rec.n} to be closed`);
    },
    async close() {
      for (const s of this._servers) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };

  let connSeq = 0;
  const server = http.createServer({ keepAliveTimeout: 65000, requestTimeout: 0, headersTimeout: 60000 });
  server.on('connection', (sock) => {
    const c = { id: ++connSeq, openedAt: now(), closedAt: null, remotePort: sock.remotePort, requests: [] };
    sock._mockConn = c;
    mock.conns.set(c.id, c);
    mock._servers.add(sock);
    sock.on('close', () => {
      c.closedAt = now();
      mock._servers.delete(sock);
      for (const n of c.requests) {
        const rec = mock.requests.find((q) => q.n === n);
        if (rec && rec.closedAt == null) rec.closedAt = c.closedAt;
      }
    });
  });

  server.on('request', async (req, res) => {
    const chunks = [];
    for await (const ch of req) chunks.push(ch);
    const rawBody = Buffer.concat(chunks).toString('utf8');
    const u = new URL(req.url, 'http://mock');
    let body = null;
    try { body = rawBody ? JSON.parse(rawBody) : null; } catch { body = null; }
    const rt = route(req.method, u.pathname);
    const conn = req.socket._mockConn;
    const rec = {
      n: mock.requests.length, t: now(), method: req.method, url: req.url, path: u.pathname,
      query: Object.fromEntries(u.searchParams), headers: req.headers, rawHeaders: req.rawHeaders,
      rawBody, body, format: rt?.format ?? null,
      stream: rt ? (rt.format === 'gemini' ? !!rt.stream : !!body?.stream) : false,
      model: rt?.model ?? body?.model ?? null, connId: conn?.id,
      status: null, firstByteAt: null, finishedAt: null, abortedAt: null, closedAt: null,
      bytesOut: 0, framesOut: 0, writeStalls: 0,
    };
    mock.requests.push(rec);
    conn?.requests.push(rec.n);
    res.on('finish', () => { rec.finishedAt = now(); });
    res.on('close', () => { if (!res.writableFinished && rec.abortedAt == null) rec.abortedAt = now(); });
    try {
      await handle(mock, rt, req, res, rec, u);
    } catch (e) {
      rec.handlerError = String(e?.stack || e);
      if (!res.headersSent && !res.destroyed) { res.writeHead(500, { 'content-type': 'application/json' }); res.end(JSON.stringify(errorBody('openai', 500, `mock handler error: ${e.message}`))); }
      else res.destroy();
    }
  });

  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(port, host, resolve); });
  mock.server = server;
  mock.port = server.address().port;
  mock.url = `http://${host}:${mock.port}`;
  return mock;
}

function send(res, rec, status, headers, text) {
  rec.status = status;
  rec.firstByteAt = now();
  const buf = Buffer.from(text);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': buf.length, ...headers });
  rec.bytesOut += buf.length;
  res.end(buf);
}

async function write(res, rec, s) {
  if (res.destroyed) return false;
  if (rec.firstByteAt == null) rec.firstByteAt = now();
  rec.bytesOut += Buffer.byteLength(s);
  rec.framesOut++;
  if (!res.write(s)) {
    rec.writeStalls++;
    await new Promise((r) => {
      const done = () => { res.off('drain', done); res.off('close', done); r(); };
      res.on('drain', done); res.on('close', done);
    });
  }
  return !res.destroyed;
}

async function handle(mock, rt, req, res, rec, u) {
  if (!rt) return send(res, rec, 404, {}, JSON.stringify(errorBody('openai', 404, `mock: no route for ${req.method} ${u.pathname}`)));
  if (rt.kind === 'models') {
    return send(res, rec, 200, {}, JSON.stringify({ object: 'list', data: mock.models.map((id) => ({ id, object: 'model', created: 1700000000, owned_by: 'mock' })) }));
  }
  if (rt.kind === 'count') {
    const n = Math.ceil(rec.rawBody.length / 4);
    return send(res, rec, 200, {}, JSON.stringify(rt.format === 'gemini' ? { totalTokens: n, promptTokensDetails: [{ modality: 'TEXT', tokenCount: n }] } : { input_tokens: n }));
  }

  let spec = mock._queue.length ? mock._queue.shift() : (mock._default ?? {});
  if (typeof spec === 'function') spec = spec(rec) ?? {};
  const r = normalise(spec, rec, ++mock._seq);
  r.reqBody = rec.body || {};
  r.includeUsage = !!rec.body?.stream_options?.include_usage;
  r.alt = rt.format === 'gemini' ? (rec.query.alt ?? rec.query.$alt ?? null) : null;
  const F = FORMATS[rt.format];
  rec.reply = spec;

  if (r.delayMs) await sleep(r.delayMs);
  if (res.destroyed) return;

  if (r.raw) return send(res, rec, r.raw.status ?? 200, r.raw.headers ?? {}, typeof r.raw.body === 'string' ? r.raw.body : JSON.stringify(r.raw.body));
  if (r.error) {
    const e = r.error;
    const status = e.status ?? 500;
    const body = e.body !== undefined ? (typeof e.body === 'string' ? e.body : JSON.stringify(e.body)) : JSON.stringify(errorBody(rt.format, status, e.message, e.type, e.code));
    return send(res, rec, status, { ...(e.headers || {}), ...(r.headers || {}) }, body);
  }
  if (rec.body == null) return send(res, rec, 400, {}, JSON.stringify(errorBody(rt.format, 400, 'mock: request body is not JSON')));

  if (!rec.stream) {
    const text = JSON.stringify(F.body(r));
    if (r.cutAfter != null) {
      rec.status = r.status ?? 200;
      rec.firstByteAt = now();
      res.writeHead(rec.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...(r.headers || {}) });
      res.write(text.slice(0, text.length >> 1));
      rec.bytesOut += text.length >> 1;
      await sleep(20);
      res.socket?.destroy();
      return;
    }
    return send(res, rec, r.status ?? 200, r.headers || {}, text);
  }

  const sse = !(rt.format === 'gemini' && r.alt !== 'sse');
  rec.status = r.status ?? 200;
  res.writeHead(rec.status, {
    'content-type': sse ? 'text/event-stream' : 'application/json',
    'cache-control': 'no-cache', 'x-accel-buffering': 'no', ...(r.headers || {}),
  });
  res.flushHeaders();

  if (r.endless) {
    const e = { intervalMs: 5, bytes: 32, burstBytes: 0, maxMs: 60000, ...r.endless };
    const payload = 'x'.repeat(e.bytes);
    for (const f of F.endlessHead(r)) if (!(await write(res, rec, f))) return;
    const end = now() + e.maxMs;
    while (!res.destroyed && now() < end) {
      let sent = 0;
      do {
        const f = F.endlessFrame(r, payload);
        if (!(await write(res, rec, f))) return;
        sent += f.length;
      } while (sent < e.burstBytes && !res.destroyed);
      await sleep(e.intervalMs);
    }
    res.end();
    return;
  }

  let k = 0;
  for (const f of F.frames(r)) {
    if (r.cutAfter != null && k >= r.cutAfter) { await sleep(10); res.socket?.destroy(); return; }
    if (r.errorAfter != null && k >= r.errorAfter) {
      await write(res, rec, F.streamError(r, r.streamError || {}));
      res.end();
      return;
    }
    if (!(await write(res, rec, f))) return;
    k++;
    if (r.hold && k === (r.holdAfter ?? 1)) await r.hold;
    if (r.eventDelayMs) await sleep(r.eventDelayMs);
  }
  res.end();
}
