// Unit tests of agent-client.js logic that needs no browser: `node --test tests/js/`.
// A fake WebSocket plays the server; Node's mock timers drive timeouts and backoff.
// The browser tests (tests/test_web_browser.py) are the proof against a real server.

import { test } from "node:test";
import assert from "node:assert/strict";

import {
  AckTimeoutError,
  AgentClient,
  AudioPlayback,
  NotConnectedError,
  parseAudioFrame,
} from "../../trio_agent/server/web/static/agent-client.js";

/**
 * One AUDIO binary frame as the server sends it: 2-byte big-endian header length,
 * UTF-8 JSON header, pcm_s16le samples.
 * @param {object} header @param {number[]} samples  int16 values, channels interleaved
 */
function audioFrame(header, samples) {
  const head = new TextEncoder().encode(
    JSON.stringify({ msg_type: "AUDIO", format: "pcm_s16le", channels: 1, ...header }),
  );
  const bytes = new Uint8Array(2 + head.length + samples.length * 2);
  new DataView(bytes.buffer).setUint16(0, head.length, false);
  bytes.set(head, 2);
  const pcm = new DataView(bytes.buffer, 2 + head.length);
  samples.forEach((value, i) => pcm.setInt16(i * 2, value, true));
  return bytes.buffer;
}

/** `ms` milliseconds of mono audio at `rate` Hz for request `requestId`, chunk `seq`. */
function chunk(requestId, seq, ms, rate = 16000) {
  const samples = new Array((rate * ms) / 1000).fill(1000);
  return audioFrame(
    { request_id: requestId, seq, start_ms: seq * ms, duration_ms: ms, sample_rate: rate },
    samples,
  );
}

class FakeSocket {
  /** @type {FakeSocket[]} */
  static all = [];

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedWith = { code, reason };
  }

  // ---- the server's side
  deliverBinary(buffer) {
    this.onmessage?.({ data: buffer });
  }

  deliver(frame) {
    this.onmessage?.({ data: JSON.stringify({ session_id: "s", msg_id: "s1", ts: 0, ...frame }) });
  }

  /** SESSION; `resume` is the v1.2 offer ({token, window_s}) of a server that resumes. */
  session(agents = { lorem: { description: "", available: true } }, { resume } = {}) {
    /** @type {Record<string, unknown>} */
    const payload = { protocol: "1.0", server: "fake", agents, default_agent: "lorem", limits: {} };
    if (resume) payload.resume = resume;
    this.deliver({ msg_type: "SESSION", session_id: `session-${FakeSocket.all.indexOf(this)}`, payload });
  }

  /** RESUMED answering the RESUME this socket received, for the session it names. */
  resumed({ requests = {}, interrupts = {}, token = "next-token", windowS = 30 } = {}) {
    const resume = this.last("RESUME");
    this.deliver({
      msg_type: "RESUMED",
      session_id: resume.session_id,
      ref: resume.msg_id,
      payload: { requests, interrupts, resume: { token, window_s: windowS } },
    });
  }

  error(code, ref, message = code) {
    this.deliver({ msg_type: "ERROR", ref, payload: { code, message } });
  }

  stream(requestId, seq, delta) {
    this.deliver({ msg_type: "STREAM", request_id: requestId, payload: { seq, delta } });
  }

  done(requestId, payload) {
    this.deliver({ msg_type: "DONE", request_id: requestId, payload });
  }

  ack(interrupt, interrupted) {
    this.deliver({
      msg_type: "INTERRUPT_ACK",
      ref: interrupt.msg_id,
      payload: {
        interrupted,
        interrupted_count: interrupted.length,
        reason: interrupt.payload.reason,
        targets: {},
      },
    });
  }

  serverClose(code = 1001, reason = "") {
    this.onclose?.({ code, reason });
  }

  last(type) {
    return this.sent.filter((f) => f.msg_type === type).at(-1);
  }
}

function newClient(options = {}) {
  FakeSocket.all = [];
  const client = new AgentClient("ws://test/ws", {
    WebSocket: /** @type {any} */ (FakeSocket),
    heartbeatMs: 0,
    ...options,
  });
  const events = [];
  for (const type of [
    "status",
    "session",
    "stream",
    "done",
    "interrupted",
    "ack",
    "ack-timeout",
    "error",
    "heartbeat",
    "reconnecting",
    "resumed",
    "resume_failed",
  ]) {
    client.addEventListener(type, (e) => events.push([type, /** @type {any} */ (e).detail]));
  }
  return { client, events };
}

async function connected(options = {}) {
  const { client, events } = newClient(options);
  const opening = client.connect();
  const socket = FakeSocket.all[0];
  socket.session();
  await opening;
  return { client, events, socket };
}

test("connect resolves with the SESSION payload, and offers no subprotocol without a token", async () => {
  const { client, events, socket } = await connected();
  assert.equal(client.state, "open");
  assert.equal(client.sessionId, "session-0");
  assert.deepEqual(Object.keys(client.session.agents), ["lorem"]);
  assert.equal(socket.protocols, undefined);
  assert.deepEqual(
    events.filter(([t]) => t === "status").map(([, d]) => d.state),
    ["connecting", "open"],
  );
});

test("a token travels as a subprotocol, never in the URL", async () => {
  const { socket } = await connected({ token: "s3cret" });
  assert.deepEqual(socket.protocols, ["trio-agent.v1", "trio-agent.token.s3cret"]);
  assert.equal(socket.url, "ws://test/ws");
});

test("a first connection that fails rejects connect()", async () => {
  const { client } = newClient();
  const opening = client.connect();
  FakeSocket.all[0].serverClose(1006);
  await assert.rejects(opening, NotConnectedError);
  assert.equal(client.state, "closed");
  assert.equal(FakeSocket.all.length, 1);
});

test("a request streams into text, events and an async iterator, and ends with the DONE", async () => {
  const { client, socket, events } = await connected();
  const r = client.request("hi", { agent: "lorem", options: { words: 3 }, timeoutS: 5 });
  const sent = socket.last("REQUEST");
  assert.equal(sent.request_id, r.requestId);
  assert.match(r.requestId, /^[A-Za-z0-9._:-]{1,64}$/);
  assert.deepEqual(sent.payload, { input: "hi", agent: "lorem", options: { words: 3 }, timeout_s: 5 });
  const deltas = [];
  r.addEventListener("delta", (e) => deltas.push(/** @type {any} */ (e).detail.delta));
  socket.stream(r.requestId, 0, "lorem");
  socket.stream(r.requestId, 1, " ipsum");
  assert.equal(r.text, "lorem ipsum");
  assert.equal(r.frames, 2);
  socket.done(r.requestId, { status: "completed", interrupted: false, frames: 2 });
  const done = await r.done;
  assert.equal(done.status, "completed");
  assert.deepEqual(deltas, ["lorem", " ipsum"]);
  const iterated = [];
  for await (const delta of r) iterated.push(delta);
  assert.deepEqual(iterated, ["lorem", " ipsum"]);
  assert.equal(events.filter(([t]) => t === "stream").length, 2);
  assert.equal(client.streaming.length, 0);
});

test("interrupt is optimistic: done resolves before the ACK, late frames never reach the text", async () => {
  const { client, socket, events } = await connected();
  const r = client.request("hi");
  socket.stream(r.requestId, 0, "one");
  const ack = client.interrupt(r.requestId, "USER_NEW_INPUT");
  // Ended locally, before anything came back.
  assert.equal(r.status, "interrupted");
  const done = await r.done;
  assert.deepEqual(
    { status: done.status, interrupted: done.interrupted, frames: done.frames, local: done.local },
    { status: "interrupted", interrupted: true, frames: 1, local: true },
  );
  const interrupt = socket.last("INTERRUPT");
  assert.equal(interrupt.request_id, r.requestId);
  assert.equal(interrupt.payload.reason, "USER_NEW_INPUT");
  // Frames that were in flight: dropped and counted, not stale.
  socket.stream(r.requestId, 1, " two");
  socket.stream(r.requestId, 2, " three");
  assert.equal(r.text, "one");
  assert.equal(client.stats.droppedAfterInterrupt, 2);
  socket.ack(interrupt, [r.requestId]);
  const payload = await ack;
  assert.deepEqual(payload.interrupted, [r.requestId]);
  assert.equal(payload.msgId, interrupt.msg_id);
  assert.ok(payload.ackMs >= 0);
  assert.equal(client.stats.lastAckMs, payload.ackMs);
  assert.equal(client.stats.staleAfterAck, 0);
  // A STREAM after the ACK that named it breaks guarantee 5: counted as stale.
  socket.stream(r.requestId, 3, " four");
  assert.equal(client.stats.staleAfterAck, 1);
  assert.equal(r.text, "one");
  assert.ok(events.some(([t, d]) => t === "error" && d.code === "PROTOCOL_VIOLATION"));
  socket.done(r.requestId, { status: "interrupted", interrupted: true, frames: 4 });
  assert.equal(r.serverDone.frames, 4);
  assert.equal(r.result.local, true);
  assert.deepEqual(
    events.filter(([t]) => t === "interrupted").map(([, d]) => d.msgId),
    [interrupt.msg_id],
  );
});

test("interrupt() without an id cuts every streaming response and names none on the wire", async () => {
  const { client, socket } = await connected();
  const a = client.request("a");
  const b = client.request("b");
  socket.done(b.requestId, { status: "completed", interrupted: false, frames: 0 });
  const c = client.request("c");
  const ack = client.interrupt();
  const interrupt = socket.last("INTERRUPT");
  assert.equal(interrupt.request_id, undefined);
  assert.equal(a.status, "interrupted");
  assert.equal(b.status, "completed");
  assert.equal(c.status, "interrupted");
  socket.ack(interrupt, [a.requestId, c.requestId]);
  assert.equal((await ack).interrupted_count, 2);
});

test("a new request right after an interrupt streams normally", async () => {
  const { client, socket } = await connected();
  const old = client.request("old");
  socket.stream(old.requestId, 0, "a");
  client.interrupt().catch(() => {});
  const fresh = client.request("new");
  socket.stream(old.requestId, 1, " late");
  socket.stream(fresh.requestId, 0, "fresh");
  assert.equal(old.text, "a");
  assert.equal(fresh.text, "fresh");
  assert.equal(fresh.status, "streaming");
  client.close();
});

test("no ACK within ackTimeoutMs rejects with AckTimeoutError; a late ACK is still counted", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { client, socket, events } = await connected({ ackTimeoutMs: 1000 });
  const r = client.request("hi");
  const ack = client.interrupt(r.requestId);
  const interrupt = socket.last("INTERRUPT");
  assert.equal(r.status, "interrupted");
  t.mock.timers.tick(999);
  assert.equal(client.stats.ackTimeouts, 0);
  t.mock.timers.tick(1);
  await assert.rejects(ack, (error) => {
    assert.ok(error instanceof AckTimeoutError);
    assert.equal(error.msgId, interrupt.msg_id);
    assert.deepEqual(error.requestIds, [r.requestId]);
    return true;
  });
  assert.equal(client.stats.ackTimeouts, 1);
  assert.ok(events.some(([type, d]) => type === "ack-timeout" && d.msgId === interrupt.msg_id));
  socket.stream(r.requestId, 0, "in flight");
  assert.equal(client.stats.droppedAfterInterrupt, 1);
  assert.equal(client.stats.lastAckMs, null);
  socket.ack(interrupt, [r.requestId]);
  assert.equal(client.stats.lateAcks, 1);
  assert.ok(client.stats.lastAckMs >= 0);
  assert.ok(events.some(([type, d]) => type === "ack" && d.late));
  socket.stream(r.requestId, 1, "stale");
  assert.equal(client.stats.staleAfterAck, 1);
  assert.equal(r.text, "");
});

test("interrupting a response that already ended changes nothing locally", async () => {
  const { client, socket } = await connected();
  const r = client.request("hi");
  socket.done(r.requestId, { status: "completed", interrupted: false, frames: 0 });
  const ack = client.interrupt(r.requestId);
  const interrupt = socket.last("INTERRUPT");
  assert.equal(r.status, "completed");
  socket.deliver({
    msg_type: "INTERRUPT_ACK",
    ref: interrupt.msg_id,
    payload: {
      interrupted: [],
      interrupted_count: 0,
      reason: "USER_NEW_INPUT",
      targets: { [r.requestId]: "already_done" },
    },
  });
  assert.equal((await ack).targets[r.requestId], "already_done");
});

test("playedMs travels in an INTERRUPT of one request, never in an interrupt-all", async () => {
  const { client, socket } = await connected();
  const r = client.request("hi");
  client.interrupt(r.requestId, "USER_NEW_INPUT", { playedMs: 1234.4 }).catch(() => {});
  assert.equal(socket.last("INTERRUPT").payload.played_ms, 1234);
  client.interrupt(null, "USER_NEW_INPUT", { playedMs: 1234.4 }).catch(() => {});
  assert.equal(socket.last("INTERRUPT").payload.played_ms, undefined);
  client.close();
});

test("an ERROR that refuses a REQUEST ends it as failed with the code", async () => {
  const { client, socket, events } = await connected();
  const r = client.request("hi", { agent: "nope" });
  socket.deliver({
    msg_type: "ERROR",
    ref: socket.last("REQUEST").msg_id,
    request_id: r.requestId,
    payload: { code: "UNKNOWN_AGENT", message: "agent 'nope' is not available here" },
  });
  const done = await r.done;
  assert.equal(done.status, "failed");
  assert.equal(done.error.code, "UNKNOWN_AGENT");
  assert.ok(events.some(([type, d]) => type === "error" && d.code === "UNKNOWN_AGENT"));
});

test("a gap in seq is a protocol violation", async () => {
  const { client, socket } = await connected();
  const r = client.request("hi");
  socket.stream(r.requestId, 0, "a");
  socket.stream(r.requestId, 2, "c");
  assert.equal(client.stats.violations, 1);
});

test("request() without a session throws NotConnectedError", () => {
  const { client } = newClient();
  assert.throws(() => client.request("hi"), NotConnectedError);
});

test("heartbeats measure the RTT, and silence means the connection is lost", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { client, socket, events } = await connected({
    heartbeatMs: 1000,
    heartbeatTimeoutMs: 2500,
    reconnectMinMs: 100,
  });
  const first = socket.last("HEARTBEAT"); // sent as soon as the session opened
  socket.deliver({ msg_type: "HEARTBEAT", ref: first.msg_id, payload: {} });
  assert.ok(client.stats.rttMs >= 0);
  assert.ok(events.some(([type]) => type === "heartbeat"));
  const r = client.request("hi");
  t.mock.timers.tick(1000); // the next heartbeat: nobody answers it, nor the ones after
  t.mock.timers.tick(2499);
  assert.equal(client.state, "open");
  t.mock.timers.tick(1); // 2500 ms since the first unanswered one: lost
  assert.equal(client.state, "reconnecting");
  assert.equal(socket.closedWith.code, 4000);
  const done = await r.done;
  assert.equal(done.status, "disconnected");
  assert.match(done.reason, /no HEARTBEAT reply/);
});

test("after a lost session the client reconnects with growing backoff to a new session", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { client, socket, events } = await connected({
    reconnectMinMs: 100,
    reconnectMaxMs: 350,
  });
  const r = client.request("hi");
  const ack = client.interrupt(r.requestId);
  const pending = client.request("second");
  socket.serverClose(1001);
  await assert.rejects(ack, NotConnectedError);
  assert.equal((await pending.done).status, "disconnected");
  assert.equal(client.state, "reconnecting");
  const delays = [];
  for (let attempt = 1; attempt <= 4; attempt++) {
    const scheduled = events.filter(([type, d]) => type === "status" && d.delayMs !== undefined);
    const delay = scheduled.at(-1)[1].delayMs;
    delays.push(delay);
    const before = FakeSocket.all.length;
    t.mock.timers.tick(delay);
    assert.equal(FakeSocket.all.length, before + 1);
    if (attempt < 4) FakeSocket.all.at(-1).serverClose(1006); // still down
  }
  // Each delay is within [base/2, base], base = min(350, 100 * 2^n).
  [100, 200, 350, 350].forEach((base, i) => {
    assert.ok(delays[i] >= base / 2 && delays[i] <= base, `${delays[i]} for ${base}`);
  });
  FakeSocket.all.at(-1).session();
  assert.equal(client.state, "open");
  assert.equal(client.sessionId, `session-${FakeSocket.all.length - 1}`);
  assert.equal(client.stats.reconnects, 1);
  const reopened = events.filter(([type]) => type === "session").at(-1)[1];
  assert.equal(reopened.reconnected, true);
  // The backoff starts over after a success.
  FakeSocket.all.at(-1).serverClose(1001);
  const next = events.filter(([type, d]) => type === "status" && d.delayMs !== undefined).at(-1);
  assert.ok(next[1].delayMs <= 100);
  client.close();
});

test("a server's close says its code and its own reason, in one pair of parentheses", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { client, socket, events } = await connected();
  const r = client.request("hi");
  socket.serverClose(1001, "server shutting down");
  const status = events.filter(([type]) => type === "status").at(-1)[1];
  assert.equal(status.state, "reconnecting");
  assert.equal(status.reason, "closed by the server (code 1001: server shutting down)");
  assert.match((await r.done).reason, /closed by the server \(code 1001: server shutting down\)$/);
  t.mock.timers.tick(status.delayMs);
  FakeSocket.all.at(-1).session();
  FakeSocket.all.at(-1).serverClose(1006); // no close frame: no reason
  const bare = events.filter(([type]) => type === "status").at(-1)[1];
  assert.equal(bare.reason, "closed by the server (code 1006)");
  client.close();
});

test("close() ends what streams and never reconnects", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval"] });
  const { client, socket } = await connected();
  const r = client.request("hi");
  client.close();
  assert.equal(client.state, "closed");
  assert.equal(socket.closedWith.code, 1000);
  assert.equal((await r.done).status, "disconnected");
  t.mock.timers.tick(60_000);
  assert.equal(FakeSocket.all.length, 1);
});

// ---------------------------------------------------------------- audio

class FakeSource extends EventTarget {
  constructor(context) {
    super();
    this.context = context;
    this.buffer = null;
    this.startedAt = null;
    this.stoppedAt = null;
  }
  connect() {}
  disconnect() {
    this.disconnected = true;
  }
  start(when) {
    this.startedAt = when;
  }
  stop() {
    this.stoppedAt = this.context.currentTime;
  }
}

class FakeAudioContext {
  constructor() {
    this.currentTime = 0;
    this.destination = {};
    this.sources = [];
  }
  createBuffer(channels, length, sampleRate) {
    const data = Array.from({ length: channels }, () => new Float32Array(length));
    return { duration: length / sampleRate, sampleRate, numberOfChannels: channels, getChannelData: (c) => data[c] };
  }
  createBufferSource() {
    const source = new FakeSource(this);
    this.sources.push(source);
    return source;
  }
}

test("the playback queue plays back to back and stops everything at once", () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context), { jitterMs: 0 });
  const second = new Float32Array(24000); // one second at 24 kHz
  assert.deepEqual(audio.enqueue(second, { requestId: "a" }), { startAt: 0, duration: 1 });
  assert.deepEqual(audio.enqueue(second, { requestId: "a" }), { startAt: 1, duration: 1 });
  assert.deepEqual(audio.enqueue(second, { requestId: "b" }), { startAt: 2, duration: 1 });
  assert.equal(audio.pending, 3);
  context.currentTime = 1.5;
  assert.equal(audio.playedMs("a"), 1500);
  assert.equal(audio.stop("a"), 2);
  assert.equal(audio.pending, 1);
  assert.equal(audio.playedMs("a"), 1500);
  assert.equal(audio.stop(), 1);
  assert.equal(audio.pending, 0);
  assert.ok(context.sources.every((s) => s.stoppedAt === 1.5 && s.disconnected));
  // The next chunk plays now, not after what was stopped.
  assert.equal(audio.enqueue(second).startAt, 1.5);
});

test("the jitter buffer delays the first chunk after a dry spell, not the ones behind it", () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context), { jitterMs: 50 });
  const tenth = new Float32Array(2400); // 100 ms at 24 kHz
  assert.equal(audio.enqueue(tenth).startAt, 0.05);
  assert.equal(audio.enqueue(tenth).startAt, 0.15000000000000002);
  assert.equal(audio.queuedMs(), 200);
  context.currentTime = 0.1;
  assert.equal(audio.queuedMs(), 150);
  context.currentTime = 1; // the queue ran dry: the next chunk waits for its followers
  assert.equal(audio.enqueue(tenth).startAt, 1.05);
});

test("playedMs() remembers buffers that prune() forgot", () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context), { jitterMs: 0 });
  audio.enqueue(new Float32Array(2400), { requestId: "a" });
  context.currentTime = 0.5;
  audio._entries[0].ended = true;
  audio.prune();
  assert.equal(audio._entries.length, 0);
  assert.equal(audio.playedMs("a"), 100);
});

test("parseAudioFrame reads the header and the samples, mono or interleaved", () => {
  const mono = parseAudioFrame(
    audioFrame({ request_id: "r1", seq: 0, start_ms: 0, duration_ms: 0.1875, sample_rate: 16000 }, [0, 16384, -32768]),
  );
  assert.equal(mono.header.request_id, "r1");
  assert.equal(mono.header.sample_rate, 16000);
  assert.deepEqual([...mono.channels[0]], [0, 0.5, -1]);
  // A header of odd length puts the samples at an odd offset: still read right.
  const stereo = parseAudioFrame(
    new Uint8Array(
      audioFrame({ request_id: "r", seq: 3, start_ms: 5, duration_ms: 0.125, sample_rate: 16000, channels: 2 }, [
        100, -100, 200, -200,
      ]),
    ),
  );
  assert.equal(stereo.header.seq, 3);
  assert.deepEqual(
    stereo.channels.map((c) => [...c].map((v) => Math.round(v * 32768))),
    [
      [100, 200],
      [-100, -200],
    ],
  );
});

test("parseAudioFrame refuses what is not an AUDIO frame", () => {
  const good = { request_id: "r1", seq: 0, start_ms: 0, duration_ms: 0.0625, sample_rate: 16000 };
  const cases = [
    [new Uint8Array([0]).buffer, /too short/],
    [new Uint8Array([0, 50, 123]).buffer, /runs past the end/],
    [new Uint8Array([0, 2, 123, 125, 0]).buffer.slice(0, 4), /not an object|not AUDIO|JSON/],
    [new Uint8Array([0, 3, 0x7b, 0x7d, 0x7d]).buffer, /not UTF-8 JSON/],
    [audioFrame({ ...good, msg_type: "STREAM" }, [1]), /not AUDIO/],
    [audioFrame({ ...good, seq: -1 }, [1]), /seq/],
    [audioFrame({ ...good, sample_rate: 0 }, [1]), /sample_rate/],
    [audioFrame({ ...good, format: "opus" }, [1]), /format/],
    [audioFrame(good, [1]).slice(0, -1), /whole/],
  ];
  for (const [data, message] of cases) {
    assert.throws(() => parseAudioFrame(data), (error) => {
      assert.equal(error.code, "INVALID_AUDIO");
      assert.match(error.message, message);
      return true;
    });
  }
});

test("AUDIO frames play through the queue at their own sample rate", async () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context), { jitterMs: 0 });
  const { client, socket } = await connected({ audio });
  const r = client.request("speak", { options: { voice: true } });
  assert.equal(socket.last("REQUEST").payload.options.voice, true);
  const heard = [];
  r.addEventListener("audio", (e) => heard.push(/** @type {any} */ (e).detail.header.seq));
  socket.deliver({ msg_type: "STREAM", request_id: r.requestId, payload: { seq: 0, delta: "Hi", start_ms: 0 } });
  socket.deliverBinary(chunk(r.requestId, 0, 100, 22050));
  socket.deliverBinary(chunk(r.requestId, 1, 100, 22050));
  assert.deepEqual(heard, [0, 1]);
  assert.deepEqual(r.startsMs, [0]);
  assert.equal(r.audioFrames, 2);
  assert.equal(r.audioMs, 200);
  assert.equal(audio.pending, 2);
  assert.equal(audio.queuedMs(r.requestId), 200);
  assert.equal(audio._entries[0].source.buffer.sampleRate, 22050);
  assert.equal(client.stats.audioFrames, 2);
  assert.equal(client.stats.violations, 0);
  client.close();
});

test("interrupt() of a spoken reply stops its audio at once and sends how much played", async () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context), { jitterMs: 0 });
  const { client, socket, events } = await connected({ audio });
  const r = client.request("speak", { options: { voice: true } });
  for (let seq = 0; seq < 5; seq++) socket.deliverBinary(chunk(r.requestId, seq, 100));
  context.currentTime = 0.25;
  const ack = client.interrupt(r.requestId);
  assert.equal(socket.last("INTERRUPT").payload.played_ms, 250);
  assert.equal(audio.pending, 0);
  assert.equal(audio.queuedMs(), 0);
  assert.ok(context.sources.every((s) => s.stoppedAt === 0.25));
  // In flight when the server read the INTERRUPT: dropped, not played.
  socket.deliverBinary(chunk(r.requestId, 5, 100));
  assert.equal(audio.pending, 0);
  assert.equal(client.stats.audioDropped, 1);
  socket.ack(socket.last("INTERRUPT"), [r.requestId]);
  await ack;
  // After the ACK that named it, an AUDIO frame breaks guarantee 5.
  socket.deliverBinary(chunk(r.requestId, 6, 100));
  assert.equal(client.stats.staleAfterAck, 1);
  assert.ok(events.some(([t, d]) => t === "error" && /AUDIO frame .* after the ACK/.test(d.message)));
  socket.done(r.requestId, {
    status: "interrupted",
    interrupted: true,
    frames: 0,
    audio_ms: 600,
    heard_ms: 250,
    heard_text: "",
  });
  assert.equal(r.serverDone.heard_ms, 250);
  assert.equal(r.heardText, "");
  client.close();
});

test("the played_ms sent is where playback stopped, even if the audio clock moves meanwhile", async () => {
  // A real AudioContext's clock is advanced by the audio thread: two readings in one
  // task can differ. Here every reading is 7 ms later than the one before it.
  const context = new FakeAudioContext();
  let time = 0;
  Object.defineProperty(context, "currentTime", {
    get: () => time,
    set: (value) => {
      time = value;
    },
  });
  const audio = new AudioPlayback(() => /** @type {any} */ (context), { jitterMs: 0 });
  const { client, socket } = await connected({ audio });
  const r = client.request("speak", { options: { voice: true } });
  for (let seq = 0; seq < 5; seq++) socket.deliverBinary(chunk(r.requestId, seq, 100));
  time = 0.25;
  Object.defineProperty(context, "currentTime", { get: () => (time += 0.007) });
  const ack = client.interrupt(r.requestId);
  const sent = socket.last("INTERRUPT").payload.played_ms;
  assert.ok(sent >= 250 && sent < 300, `played_ms ${sent}`);
  const stoppedAt = audio._entries.map((e) => e.stoppedAt).filter((t) => t !== null);
  assert.ok(stoppedAt.length > 0);
  assert.equal(sent, Math.round((stoppedAt[0] - audio._entries[0].startAt) * 1000));
  socket.ack(socket.last("INTERRUPT"), [r.requestId]);
  await ack;
  client.close();
});

test("with playAudio false the page gets the frames and nothing plays", async () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context));
  const { client, socket } = await connected({ audio, playAudio: false });
  const r = client.request("speak", { options: { voice: "builtin" } });
  const frames = [];
  client.addEventListener("audio", (e) => frames.push(/** @type {any} */ (e).detail.frame));
  socket.deliverBinary(chunk(r.requestId, 0, 50));
  assert.equal(frames.length, 1);
  assert.equal(frames[0].channels[0].length, 800);
  assert.equal(context.sources.length, 0);
  assert.equal(r.spoken, true);
  client.close();
});

test("AUDIO frames that break the protocol are reported, never played", async () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context));
  const { client, socket, events } = await connected({ audio });
  const r = client.request("speak", { options: { voice: true } });
  socket.deliverBinary(new Uint8Array([0, 9, 1]).buffer);
  socket.deliverBinary(chunk("stranger", 0, 10));
  socket.deliverBinary(chunk(r.requestId, 1, 10));
  const messages = events.filter(([t]) => t === "error").map(([, d]) => d.message);
  assert.equal(messages.length, 3);
  assert.match(messages[0], /bad AUDIO frame/);
  assert.match(messages[1], /unknown request stranger/);
  assert.match(messages[2], /AUDIO seq 1 .* expected 0/);
  client.close();
});

test("interrupt() silences the audio of what it cuts", async () => {
  const context = new FakeAudioContext();
  const audio = new AudioPlayback(() => /** @type {any} */ (context));
  const { client } = await connected({ audio });
  const a = client.request("a");
  const b = client.request("b");
  audio.enqueue(new Float32Array(2400), { requestId: a.requestId });
  audio.enqueue(new Float32Array(2400), { requestId: b.requestId });
  client.interrupt(a.requestId).catch(() => {});
  assert.equal(audio.pending, 1);
  client.interrupt().catch(() => {});
  assert.equal(audio.pending, 0);
  client.close();
});

// ---------------------------------------------------------------- resume (protocol v1.2)

const OFFER = { token: "tok-1-0123456789abcdef0123456789", window_s: 30 };

/** A client on a session that offers resume, with mock timers (Date too: the window). */
async function resumable(t, options = {}) {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"] });
  const { client, events } = newClient({ reconnectMinMs: 100, reconnectMaxMs: 400, ...options });
  const opening = client.connect();
  const socket = FakeSocket.all[0];
  socket.session(undefined, { resume: OFFER });
  await opening;
  return { client, events, socket };
}

/** Let the pending (re)connect timer fire; returns the new socket. */
function nextSocket(t, events) {
  const scheduled = events.filter(([type, d]) => type === "status" && d.delayMs !== undefined).at(-1);
  const before = FakeSocket.all.length;
  t.mock.timers.tick(scheduled[1].delayMs);
  assert.equal(FakeSocket.all.length, before + 1, "no new connection after the backoff");
  return FakeSocket.all.at(-1);
}

const ofType = (events, type) => events.filter(([t]) => t === type).map(([, d]) => d);

test("a server that goes away (1001) ends its session's offer: no resume while it is down", async (t) => {
  const { client, events, socket } = await resumable(t);
  socket.serverClose(1001, "server shutting down");
  assert.equal(client.state, "reconnecting");
  const refused = nextSocket(t, events);
  refused.serverClose(1006); // nothing listens yet
  assert.deepEqual(ofType(events, "reconnecting"), [], "a new session, not a resume");
  const fresh = nextSocket(t, events);
  fresh.session();
  assert.equal(fresh.sent.filter((f) => f.msg_type === "RESUME").length, 0);
  assert.equal(client.state, "open");
  assert.equal(client.stats.reconnects, 1);
  client.close();
});

test("a drop mid-response resumes: every word once, in order, one DONE", async (t) => {
  const { client, events, socket } = await resumable(t);
  const r = client.request("hi");
  const iterated = [];
  const reading = (async () => {
    for await (const delta of r) iterated.push(delta);
  })();
  for (let seq = 0; seq < 3; seq++) socket.stream(r.requestId, seq, `w${seq} `);
  socket.serverClose(1006); // no close frame: a dropped connection
  assert.equal(client.state, "reconnecting");
  assert.equal(r.ended, false, "a resumable drop ends nothing");
  const [reconnecting] = ofType(events, "reconnecting");
  assert.equal(reconnecting.sessionId, "session-0");
  assert.equal(reconnecting.attempt, 1);
  assert.equal(socket.closedWith.code, 4000);

  const second = nextSocket(t, events);
  assert.equal(second.url, "ws://test/ws", "the resume token never travels in the URL");
  assert.equal(second.protocols, undefined);
  second.session(undefined, { resume: { token: "unused", window_s: 30 } });
  assert.equal(second.sent.length, 1);
  const resume = second.sent[0];
  assert.equal(resume.msg_type, "RESUME");
  assert.equal(resume.session_id, "session-0");
  assert.deepEqual(resume.payload, { token: OFFER.token, last_seq: { [r.requestId]: 2 } });
  assert.equal(client.state, "reconnecting", "open only once RESUMED came");

  second.resumed({ requests: { [r.requestId]: "running" }, token: "tok-2" });
  assert.equal(client.state, "open");
  assert.equal(client.sessionId, "session-0", "the connection speaks for the old session");
  const [resumed] = ofType(events, "resumed");
  assert.deepEqual(resumed.requests, { [r.requestId]: "running" });
  // The replay overlaps what arrived: dropped, never delivered twice.
  second.stream(r.requestId, 2, "w2 ");
  for (let seq = 3; seq < 5; seq++) second.stream(r.requestId, seq, `w${seq} `);
  second.done(r.requestId, { status: "completed", interrupted: false, frames: 5 });
  await reading;
  assert.deepEqual(iterated, ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]);
  assert.equal(r.text, "w0 w1 w2 w3 w4 ");
  assert.equal((await r.done).status, "completed");
  assert.equal(ofType(events, "done").length, 1);
  assert.equal(client.stats.duplicatesDropped, 1);
  assert.equal(client.stats.resumes, 1);
  assert.equal(client.stats.violations, 0);
  assert.equal(client.stats.reconnects, 0, "no new session was opened");

  // The token rotated: the next resume uses RESUMED's.
  const r2 = client.request("again");
  second.serverClose(1006);
  const third = nextSocket(t, events);
  third.session();
  assert.deepEqual(third.sent[0].payload, { token: "tok-2", last_seq: { [r2.requestId]: -1 } });
  assert.equal(ofType(events, "reconnecting").at(-1).attempt, 1, "attempts start over after a resume");
  client.close();
});

test("the resume token is never shown to the page", async (t) => {
  const { client, events, socket } = await resumable(t);
  assert.deepEqual(client.session.resume, { window_s: 30 });
  socket.serverClose(1006);
  nextSocket(t, events).session();
  FakeSocket.all.at(-1).resumed({ token: "tok-2" });
  const seen = JSON.stringify(events.map(([type, detail]) => [type, detail]));
  assert.ok(!seen.includes(OFFER.token) && !seen.includes("tok-2"), "a token in an event");
  client.close();
});

test("an ACK lost with the connection is resolved from RESUMED.interrupts", async (t) => {
  const { client, events, socket } = await resumable(t);
  const r = client.request("hi");
  socket.stream(r.requestId, 0, "one");
  const ack = client.interrupt(r.requestId, "STOP");
  const interrupt = socket.last("INTERRUPT");
  socket.serverClose(1006); // the ACK never came
  const second = nextSocket(t, events);
  second.session();
  second.resumed({
    requests: { [r.requestId]: "done" },
    interrupts: { [interrupt.msg_id]: [r.requestId] },
  });
  const result = await ack;
  assert.deepEqual(result.interrupted, [r.requestId]);
  assert.equal(result.msgId, interrupt.msg_id);
  assert.equal(result.reason, "STOP");
  assert.equal(result.resumed, true);
  assert.equal(second.last("INTERRUPT"), undefined, "an INTERRUPT the server processed is not sent again");
  // The replay may still hold a frame written before the cut: dropped, not stale.
  second.stream(r.requestId, 1, "two");
  second.done(r.requestId, { status: "interrupted", interrupted: true, frames: 2 });
  assert.equal(r.text, "one");
  assert.equal(r.serverDone.status, "interrupted");
  assert.equal(client.stats.staleAfterAck, 0);
  assert.equal(client.stats.violations, 0);
  client.close();
});

test("an interrupt made while disconnected is queued and sent right after RESUMED", async (t) => {
  const { client, events, socket } = await resumable(t, { ackTimeoutMs: 1000 });
  const r = client.request("hi");
  const other = client.request("other");
  const lost = client.interrupt(other.requestId); // sent, but the server never read it
  const lostFrame = socket.last("INTERRUPT");
  socket.serverClose(1006);
  const ack = client.interrupt(r.requestId);
  assert.equal(r.status, "interrupted", "optimistic, even while disconnected");
  assert.equal(socket.sent.filter((f) => f.msg_type === "INTERRUPT").length, 1);
  const second = nextSocket(t, events);
  second.session();
  assert.deepEqual(
    second.sent.map((f) => f.msg_type),
    ["RESUME"],
    "nothing before RESUMED",
  );
  t.mock.timers.tick(4000); // no ACK timeout runs while the session is being resumed
  second.resumed({ requests: { [r.requestId]: "running", [other.requestId]: "running" } });
  const [first, queued] = second.sent.slice(1);
  assert.equal(first.msg_type, "INTERRUPT");
  assert.equal(first.msg_id, lostFrame.msg_id, "lost with the connection: sent again, same msg_id");
  assert.equal(queued.msg_type, "INTERRUPT");
  assert.equal(queued.request_id, r.requestId);
  second.ack(first, [other.requestId]);
  second.ack(queued, [r.requestId]);
  assert.deepEqual((await ack).interrupted, [r.requestId]);
  assert.deepEqual((await lost).interrupted, [other.requestId]);
  assert.equal(client.stats.interrupts, 2, "each INTERRUPT counted once");
  client.close();
});

test("RESUME_UNKNOWN ends the session as a lost connection, then opens a new one", async (t) => {
  const { client, events, socket } = await resumable(t);
  const r = client.request("hi");
  socket.stream(r.requestId, 0, "one");
  socket.serverClose(1006);
  const ack = client.interrupt(r.requestId);
  const second = nextSocket(t, events);
  second.session();
  second.error("RESUME_UNKNOWN", second.last("RESUME").msg_id);
  second.serverClose(1008);
  const [failed] = ofType(events, "resume_failed");
  assert.equal(failed.code, "RESUME_UNKNOWN");
  assert.equal(failed.sessionId, "session-0");
  assert.equal(failed.attempts, 1);
  assert.equal(client.stats.resumeFailures, 1);
  await assert.rejects(ack, NotConnectedError);
  assert.equal(r.status, "interrupted");
  assert.equal(client.state, "reconnecting");
  const third = nextSocket(t, events);
  third.session();
  assert.equal(third.last("RESUME"), undefined, "a new session, not a resume");
  assert.equal(client.sessionId, "session-2");
  assert.equal(ofType(events, "session").at(-1).reconnected, true);
  client.close();
});

test("RESUME_DENIED fails the resume and ends what streamed as disconnected", async (t) => {
  const { client, events, socket } = await resumable(t, { reconnect: false });
  const r = client.request("hi");
  socket.serverClose(1006);
  const second = nextSocket(t, events);
  second.session();
  second.error("RESUME_DENIED", second.last("RESUME").msg_id);
  assert.equal(ofType(events, "resume_failed")[0].code, "RESUME_DENIED");
  const done = await r.done;
  assert.equal(done.status, "disconnected");
  assert.equal(client.state, "closed", "reconnect: false: no new session");
  assert.equal(second.closedWith.code, 4000);
});

test("the resume gives up after resumeAttempts, then behaves as a lost connection", async (t) => {
  const { client, events, socket } = await resumable(t, { resumeAttempts: 3 });
  const r = client.request("hi");
  socket.serverClose(1006);
  for (let attempt = 1; attempt <= 3; attempt++) {
    assert.equal(ofType(events, "reconnecting").at(-1).attempt, attempt);
    nextSocket(t, events).serverClose(1006); // still down
  }
  assert.equal(ofType(events, "reconnecting").length, 3);
  const [failed] = ofType(events, "resume_failed");
  assert.equal(failed.code, null);
  assert.equal(failed.attempts, 3);
  assert.match(failed.reason, /after 3 attempts/);
  assert.equal((await r.done).status, "disconnected");
  const fresh = nextSocket(t, events);
  fresh.session();
  assert.equal(fresh.last("RESUME"), undefined);
  client.close();
});

test("the resume gives up when the next attempt would come after the window", async (t) => {
  const { client, events, socket } = await resumable(t, { resumeAttempts: 100, reconnectMaxMs: 4000 });
  client.request("hi");
  socket.serverClose(1006);
  while (ofType(events, "resume_failed").length === 0) nextSocket(t, events).serverClose(1006);
  assert.match(ofType(events, "resume_failed")[0].reason, /window of 30 s ran out/);
  assert.ok(Date.now() < 30_000, "no attempt after the window");
  client.close();
});

test("a connection that gives SESSION but never RESUMED counts as a failed attempt", async (t) => {
  const { client, events, socket } = await resumable(t, { heartbeatTimeoutMs: 5000 });
  client.request("hi");
  socket.serverClose(1006);
  const second = nextSocket(t, events);
  second.session();
  t.mock.timers.tick(5000);
  assert.equal(second.closedWith.code, 4000);
  assert.equal(ofType(events, "reconnecting").at(-1).attempt, 2);
  const third = nextSocket(t, events);
  third.session();
  third.resumed();
  assert.equal(client.state, "open");
  client.close();
});

test("without a resume offer a drop is today's connection loss", async (t) => {
  t.mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"] });
  const { client, events, socket } = await connected({ reconnectMinMs: 100 });
  assert.equal(client.session.resume, undefined);
  const r = client.request("hi");
  socket.serverClose(1006);
  assert.equal((await r.done).status, "disconnected");
  assert.equal(ofType(events, "reconnecting").length, 0);
  const second = nextSocket(t, events);
  second.session();
  assert.equal(second.last("RESUME"), undefined);
  assert.equal(client.stats.reconnects, 1);
  client.close();
});

test("resume: false ignores the offer", async (t) => {
  const { client, events, socket } = await resumable(t, { resume: false });
  const r = client.request("hi");
  socket.serverClose(1006);
  assert.equal((await r.done).status, "disconnected");
  assert.equal(ofType(events, "reconnecting").length, 0);
  const second = nextSocket(t, events);
  second.session(undefined, { resume: OFFER });
  assert.equal(second.last("RESUME"), undefined);
  client.close();
});

for (const code of [1000, 1001, 1008, 4001]) {
  test(`a close with ${code} from the server is never resumed`, async (t) => {
    const { client, events, socket } = await resumable(t);
    const r = client.request("hi");
    socket.serverClose(code);
    assert.equal((await r.done).status, "disconnected");
    assert.equal(ofType(events, "reconnecting").length, 0);
    client.close();
  });
}

test("a spoken reply resumes its AUDIO sequence too, without a duplicate chunk", async (t) => {
  const { client, events, socket } = await resumable(t, { playAudio: false });
  const r = client.request("hi", { options: { voice: true } });
  socket.stream(r.requestId, 0, "one");
  socket.deliverBinary(chunk(r.requestId, 0, 20));
  socket.deliverBinary(chunk(r.requestId, 1, 20));
  socket.serverClose(1006);
  const second = nextSocket(t, events);
  second.session();
  assert.deepEqual(second.last("RESUME").payload.last_audio_seq, { [r.requestId]: 1 });
  assert.deepEqual(second.last("RESUME").payload.last_seq, { [r.requestId]: 0 });
  second.resumed({ requests: { [r.requestId]: "running" } });
  second.deliverBinary(chunk(r.requestId, 1, 20)); // already had it
  second.deliverBinary(chunk(r.requestId, 2, 20));
  assert.equal(r.audioFrames, 3);
  assert.equal(client.stats.duplicatesDropped, 1);
  assert.equal(client.stats.violations, 0);
  client.close();
});

test("a request the resumed session no longer knows ends as disconnected", async (t) => {
  const { client, events, socket } = await resumable(t);
  const kept = client.request("kept");
  const forgotten = client.request("forgotten");
  socket.serverClose(1006);
  const second = nextSocket(t, events);
  second.session();
  second.resumed({ requests: { [kept.requestId]: "running" } });
  assert.equal((await forgotten.done).status, "disconnected");
  assert.equal(kept.ended, false);
  client.close();
});

test("close() while resuming stops the resume and ends what streamed", async (t) => {
  const { client, events, socket } = await resumable(t);
  const r = client.request("hi");
  socket.serverClose(1006);
  client.close();
  assert.equal((await r.done).status, "disconnected");
  t.mock.timers.tick(60_000);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(client.state, "closed");
  assert.equal(ofType(events, "resume_failed").length, 0);
});
