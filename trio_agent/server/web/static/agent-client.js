// agent-client.js: the browser client of the trio-agent protocol v1 (and v1.1's speech).
//
// One ES module, no build step, no dependency. Import it from any page:
//
//   import { AgentClient } from "http://127.0.0.1:8765/static/agent-client.js";
//   const client = new AgentClient("ws://127.0.0.1:8765/ws");
//   const session = await client.connect();
//   const r = client.request("Tell me a story", { agent: "lorem" });
//   for await (const delta of r) show(delta);
//   const ack = await client.interrupt(r.requestId);   // optimistic: r.done already resolved
//
// How it keeps an interrupt instant (docs/web.md has the timeline):
//
// * interrupt() ends the targeted responses locally *before* anything is sent:
//   r.done resolves with status "interrupted", their audio stops, and every frame of
//   theirs that still arrives is dropped and counted, never added to r.text.
// * Every frame is handled synchronously in the WebSocket's message handler, with
//   O(1) work per frame; consumers read deltas from per-response buffers. Nothing the
//   page does to render text sits between the socket and an INTERRUPT_ACK or ERROR.
//   (Pages should render in requestAnimationFrame, as the demo page does.)
// * The ACK is awaited with a timeout, but the page never waits for it: local state is
//   clean at once, and the ACK only confirms what the server cut.
//
// Speech (protocol v1.1): ask with request(input, { options: { voice: true } }). AUDIO
// comes as binary WebSocket messages (parseAudioFrame), and is played through an
// AudioContext with a small jitter buffer (AudioPlayback). interrupt(id) stops every
// scheduled buffer of the response at once and sends played_ms, the playback position,
// so the server's DONE can say what was heard (heard_text).
//
// Resume (protocol v1.2): when the SESSION offers `resume` and the connection drops (not
// a close the page asked for, nor 1000/1001/1008/4001 from the server), the client
// reconnects, sends RESUME naming the last STREAM/AUDIO seq it holds of every response
// still expecting frames, and the responses continue where they stopped: a frame whose
// seq was already delivered is dropped, so a reply has no duplicate and no gap. See
// docs/web.md ("Resume").

// The wire constants, spelled again because this module has no build step: each one equals its
// Python definition in trio_agent.protocol, and tests/test_client_constants.py checks that it does.

/** The subprotocol a client offers when it sends a token (see docs/security.md). */
export const PROTOCOL_NAME = "trio-agent.v1";
/** Prefix of the subprotocol that carries the token, for browsers that cannot set headers. */
export const TOKEN_PREFIX = "trio-agent.token.";
/** The default reason of an INTERRUPT, as in the protocol. */
export const DEFAULT_REASON = "USER_NEW_INPUT";
/** The longest INTERRUPT reason the server accepts, in characters (code points). */
export const MAX_REASON_CHARS = 256;
/** The only sample format of protocol v1.1 AUDIO frames. */
export const PCM_S16LE = "pcm_s16le";

/**
 * @typedef {object} AudioHeader  the JSON header of an AUDIO binary frame
 * @property {"AUDIO"} msg_type
 * @property {string} request_id
 * @property {number} seq  audio chunks of the request, from 0
 * @property {number} start_ms  the chunk's offset in the spoken reply
 * @property {number} duration_ms
 * @property {"pcm_s16le"} format
 * @property {number} sample_rate
 * @property {number} channels
 *
 * @typedef {object} AudioFrame
 * @property {AudioHeader} header
 * @property {Float32Array[]} channels  the samples in [-1, 1), one array per channel
 */

/**
 * Parse one AUDIO binary message: a 2-byte big-endian header length, a UTF-8 JSON
 * header, then pcm_s16le samples (channels interleaved). Pure: no AudioContext.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @returns {AudioFrame}
 * @throws {AgentClientError} code "INVALID_AUDIO" for anything else
 */
export function parseAudioFrame(data) {
  const bytes = ArrayBuffer.isView(data)
    ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
    : new Uint8Array(data);
  const bad = (/** @type {string} */ why) => new AgentClientError(`bad AUDIO frame: ${why}`, "INVALID_AUDIO");
  if (bytes.length < 2) throw bad(`${bytes.length} bytes is too short for the header length`);
  const headerLength = (bytes[0] << 8) | bytes[1];
  if (2 + headerLength > bytes.length) {
    throw bad(`the header length ${headerLength} runs past the end of ${bytes.length} bytes`);
  }
  /** @type {any} */
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(2, 2 + headerLength)));
  } catch {
    throw bad("the header is not UTF-8 JSON");
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) throw bad("the header is not an object");
  if (header.msg_type !== "AUDIO") throw bad(`msg_type ${JSON.stringify(header.msg_type)}, not AUDIO`);
  if (typeof header.request_id !== "string") throw bad("no request_id");
  if (!Number.isInteger(header.seq) || header.seq < 0) throw bad("seq is not an integer >= 0");
  for (const name of ["start_ms", "duration_ms"]) {
    if (typeof header[name] !== "number" || !(header[name] >= 0)) throw bad(`${name} is not a number >= 0`);
  }
  if ((header.format ?? PCM_S16LE) !== PCM_S16LE) throw bad(`format ${header.format} is not ${PCM_S16LE}`);
  if (!Number.isInteger(header.sample_rate) || header.sample_rate <= 0) throw bad("sample_rate is not a positive integer");
  const channelCount = header.channels ?? 1;
  if (!Number.isInteger(channelCount) || channelCount < 1) throw bad("channels is not a positive integer");
  const sampleBytes = bytes.length - 2 - headerLength;
  if (sampleBytes % (2 * channelCount) !== 0) {
    throw bad(`${sampleBytes} sample bytes are not whole ${channelCount}-channel s16 frames`);
  }
  const frames = sampleBytes / (2 * channelCount);
  const view = new DataView(bytes.buffer, bytes.byteOffset + 2 + headerLength, sampleBytes);
  const channels = Array.from({ length: channelCount }, () => new Float32Array(frames));
  for (let i = 0; i < frames; i++) {
    for (let c = 0; c < channelCount; c++) {
      channels[c][i] = view.getInt16((i * channelCount + c) * 2, true) / 32768;
    }
  }
  return { header: { ...header, format: PCM_S16LE, channels: channelCount }, channels };
}

/**
 * @typedef {"idle" | "connecting" | "open" | "reconnecting" | "closed"} ConnectionState
 *
 * @typedef {object} AgentClientOptions
 * @property {number} [ackTimeoutMs=15000] how long interrupt() waits for the INTERRUPT_ACK
 * @property {number} [heartbeatMs=10000] HEARTBEAT period; 0 turns heartbeats off
 * @property {number} [heartbeatTimeoutMs] no HEARTBEAT reply for this long means the
 *   connection is dead (default: twice heartbeatMs, at least 5000)
 * @property {boolean} [reconnect=true] open a new session after an unexpected close
 * @property {number} [reconnectMinMs=250] first reconnect delay; doubles per failed try
 * @property {number} [reconnectMaxMs=10000] longest reconnect delay
 * @property {boolean} [resume=true] after a dropped connection, resume the session when
 *   the server offered it (SESSION.payload.resume), so streaming responses continue
 * @property {number} [resumeAttempts=6] connections tried to resume, before the session
 *   is given up as lost (each after the reconnect backoff; never past the offer's window)
 * @property {string} [token] shared secret, offered as a subprotocol (never in the URL)
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (tests, Node)
 * @property {AudioPlayback} [audio] playback queue (default: one of its own)
 * @property {boolean} [playAudio=true] play AUDIO frames through `audio` as they come
 *   (false: the page handles the "audio" events itself)
 *
 * @typedef {object} AgentEntry
 * @property {string} description
 * @property {boolean} available
 * @property {string} [unavailable_reason]
 *
 * @typedef {object} SessionPayload  the body of the SESSION frame
 * @property {string} protocol
 * @property {string} server
 * @property {Record<string, AgentEntry>} agents
 * @property {string} [default_agent]
 * @property {Record<string, number>} limits
 * @property {{window_s: number}} [resume]  the server keeps the session this long after a
 *   drop (protocol v1.2); the offer's token is kept private to the client
 *
 * @typedef {object} DonePayload  the body of a DONE frame, or the local one
 * @property {string} status  completed | interrupted | timeout | failed | shutdown, or,
 *   locally, disconnected
 * @property {boolean} interrupted
 * @property {number} frames  STREAM frames of this response that reached r.text
 * @property {string} [reason]
 * @property {{code: string, message: string}} [error]
 * @property {string} [cancelled_by]  msg_id of the INTERRUPT that cut it
 * @property {boolean} [local]  true when the client ended the response itself
 * @property {number} [audio_ms]  spoken reply: audio the server wrote to the socket
 * @property {number} [heard_ms]  spoken reply: played_ms of the INTERRUPT (capped), else audio_ms
 * @property {string} [heard_text]  spoken reply: the words whose audio lies within heard_ms
 *
 * @typedef {object} AckPayload  the body of an INTERRUPT_ACK, plus what the client measured
 * @property {string[]} interrupted
 * @property {number} interrupted_count
 * @property {string} reason
 * @property {Record<string, string>} targets
 * @property {string} msgId  the INTERRUPT's msg_id
 * @property {number} ackMs  INTERRUPT sent to ACK received, in milliseconds
 * @property {boolean} [resumed]  true when RESUMED.payload.interrupts told it, for an ACK
 *   lost with the connection (then targets maps each cut request to "interrupted")
 *
 * @typedef {object} PendingInterrupt  an INTERRUPT awaiting its ACK
 * @property {number} sentAt
 * @property {any} timer  the ACK timeout (null while queued during a resume)
 * @property {string[]} requestIds
 * @property {(p: AckPayload) => void} resolve
 * @property {(e: Error) => void} reject
 * @property {Record<string, unknown>} frame  the INTERRUPT, kept to send after a resume
 * @property {boolean} sent
 * @property {string} reason
 *
 * @typedef {object} ClientStats
 * @property {number | null} rttMs  last HEARTBEAT round trip
 * @property {number | null} lastAckMs  last INTERRUPT to INTERRUPT_ACK time (late ones too)
 * @property {number} droppedAfterInterrupt  frames of cut responses that arrived before
 *   the ACK (they were in flight: normal)
 * @property {number} staleAfterAck  frames of a response that arrived after the ACK that
 *   named it (the server broke guarantee 5: must stay 0)
 * @property {number} interrupts  INTERRUPTs sent
 * @property {number} acks  ACKs received in time
 * @property {number} ackTimeouts  ACKs that did not come within ackTimeoutMs
 * @property {number} lateAcks  ACKs that came after their timeout
 * @property {number} framesReceived  every frame read from the socket
 * @property {number} reconnects  new sessions opened after a lost one
 * @property {number} violations  frames that broke the protocol (see the "error" event)
 * @property {number} audioFrames  AUDIO frames delivered
 * @property {number} audioDropped  AUDIO frames of cut responses dropped (in flight, or stale)
 * @property {number} resumes  sessions resumed after a dropped connection
 * @property {number} resumeFailures  resumes refused by the server or given up
 * @property {number} duplicatesDropped  replayed STREAM/AUDIO frames already delivered (a
 *   resume's replay may overlap what arrived: dropped, never delivered twice)
 */

/** Base class of the errors this module raises. */
export class AgentClientError extends Error {
  /** @param {string} message @param {string} [code] */
  constructor(message, code) {
    super(message);
    this.name = "AgentClientError";
    /** @type {string | undefined} */
    this.code = code;
  }
}

/** No INTERRUPT_ACK within ackTimeoutMs. Local state was cleared already. */
export class AckTimeoutError extends AgentClientError {
  /** @param {string} msgId @param {number} timeoutMs @param {string[]} requestIds */
  constructor(msgId, timeoutMs, requestIds) {
    super(`no INTERRUPT_ACK for ${msgId} within ${timeoutMs} ms`, "ACK_TIMEOUT");
    this.name = "AckTimeoutError";
    this.msgId = msgId;
    this.timeoutMs = timeoutMs;
    this.requestIds = requestIds;
  }
}

/** The client has no open session (not connected yet, reconnecting, or closed). */
export class NotConnectedError extends AgentClientError {
  /** @param {string} [message] */
  constructor(message = "not connected") {
    super(message, "NOT_CONNECTED");
    this.name = "NotConnectedError";
  }
}

/**
 * One reply, as it streams in. Created by {@link AgentClient#request}.
 *
 * Events: "delta" (detail: {delta, seq, startMs}), "audio" (detail: an AudioFrame),
 * "done" (detail: the DonePayload), "server-done" (detail: the server's DONE of a
 * response the client ended itself).
 */
export class AgentResponse extends EventTarget {
  /** @param {string} requestId @param {string | null} agent @param {string} msgId */
  constructor(requestId, agent, msgId) {
    super();
    /** @readonly */ this.requestId = requestId;
    /** @readonly */ this.agent = agent;
    /** msg_id of the REQUEST, so an ERROR about it can be matched. @readonly */
    this.msgId = msgId;
    /** The text delivered so far. */
    this.text = "";
    /** STREAM frames delivered so far. */
    this.frames = 0;
    /** @type {string[]} every delta, in order */
    this.deltas = [];
    /** @type {"streaming" | string} "streaming", then the final status */
    this.status = "streaming";
    /** @type {DonePayload | null} the payload r.done resolved with */
    this.result = null;
    /** @type {DonePayload | null} the server's DONE, when it came after a local end */
    this.serverDone = null;
    /** @type {string | null} msg_id of the INTERRUPT that ended it locally */
    this.cutBy = null;
    /** True once an INTERRUPT_ACK named this response: from then on, frames are stale. */
    this.ackSeen = false;
    /** True when the request asked for speech (options.voice). */
    this.voice = false;
    /** AUDIO frames delivered so far. */
    this.audioFrames = 0;
    /** Milliseconds of audio delivered so far. */
    this.audioMs = 0;
    /** @type {Array<number | null>} the start_ms of each delta (null when not spoken) */
    this.startsMs = [];
    /** Highest STREAM seq received (delivered or dropped), -1 for none: what RESUME names. */
    this._lastSeq = -1;
    /** Highest AUDIO seq received, -1 for none. */
    this._lastAudioSeq = -1;
    /** @type {(payload: DonePayload) => void} */
    let resolve = () => {};
    /** @type {Promise<DonePayload>} resolves once, with the server's DONE or the local one */
    this.done = new Promise((r) => {
      resolve = r;
    });
    this._resolve = resolve;
    /** @type {Array<() => void>} iterators waiting for a delta */
    this._waiting = [];
  }

  /** True once the response has ended, locally or by the server's DONE. */
  get ended() {
    return this.result !== null;
  }

  /** True when the request asked for speech or audio of it has arrived. */
  get spoken() {
    return this.voice || this.audioFrames > 0;
  }

  /** The words the user heard, from the server's DONE (null until it comes, or not spoken). */
  get heardText() {
    return (this.serverDone ?? this.result)?.heard_text ?? null;
  }

  /** @param {number} seq @param {string} delta @param {number | null} [startMs] @internal */
  _deliver(seq, delta, startMs = null) {
    this.text += delta;
    this.frames += 1;
    this.deltas.push(delta);
    this.startsMs.push(startMs);
    this._wake();
    this.dispatchEvent(new CustomEvent("delta", { detail: { delta, seq, startMs } }));
  }

  /** @param {AudioFrame} frame @internal */
  _deliverAudio(frame) {
    this.audioFrames += 1;
    this.audioMs += frame.header.duration_ms;
    this.dispatchEvent(new CustomEvent("audio", { detail: frame }));
  }

  /** @param {DonePayload} payload @internal */
  _end(payload) {
    if (this.result !== null) return false;
    this.result = payload;
    this.status = payload.status;
    this._resolve(payload);
    this._wake();
    this.dispatchEvent(new CustomEvent("done", { detail: payload }));
    return true;
  }

  _wake() {
    const waiting = this._waiting;
    this._waiting = [];
    for (const wake of waiting) wake();
  }

  /**
   * Iterate the deltas: those delivered so far, then each new one, until the response
   * ends. Several loops may run; each sees every delta.
   * @returns {AsyncIterator<string>}
   */
  [Symbol.asyncIterator]() {
    let next = 0;
    return {
      next: async () => {
        while (next >= this.deltas.length && !this.ended) {
          await new Promise((wake) => this._waiting.push(() => wake(undefined)));
        }
        if (next < this.deltas.length) return { value: this.deltas[next++], done: false };
        return { value: undefined, done: true };
      },
    };
  }
}

/**
 * A small playback queue on an AudioContext: buffers play one after the other, and
 * {@link AudioPlayback#stop} silences everything scheduled at once.
 *
 * The jitter buffer: when the queue has run dry (the first chunk of a reply, or one
 * that came late), the next chunk starts `jitterMs` from now instead of at once, so
 * the chunks behind it, arriving at the network's pace, land back to back without gaps.
 *
 * Every source plays through one analyser, so {@link AudioPlayback#measureAfterStop}
 * can *listen* for sound after a stop: the figure the demo page shows, which must be 0.
 */
export class AudioPlayback {
  /** @param {() => AudioContext} [createContext] @param {{jitterMs?: number}} [options] */
  constructor(createContext = () => new AudioContext(), { jitterMs = 60 } = {}) {
    this._createContext = createContext;
    /** How far ahead the first chunk after a dry spell is scheduled, in milliseconds. */
    this.jitterMs = jitterMs;
    /** @type {AudioContext | null} */
    this._context = null;
    /** @type {AudioNode | null} where every source plays: an analyser, then the speakers */
    this._output = null;
    /** @type {AnalyserNode | null} */
    this._analyser = null;
    /** @type {Array<{source: AudioScheduledSourceNode, requestId: string | null, startAt: number, duration: number, stoppedAt: number | null, ended: boolean}>} */
    this._entries = [];
    this._cursor = 0;
    /** @type {Map<string | null, number>} seconds played of entries prune() forgot, by request */
    this._prunedPlayed = new Map();
    /** Context time of the last stop() that stopped something, or null. */
    this.lastStopAt = /** @type {number | null} */ (null);
  }

  /** The AudioContext, created on first use (browsers want a user gesture first). */
  get context() {
    if (this._context === null) {
      const context = this._createContext();
      this._context = context;
      this._output = context.destination;
      if (typeof context.createAnalyser === "function") {
        const analyser = context.createAnalyser();
        analyser.fftSize = 2048;
        analyser.connect(context.destination);
        this._analyser = analyser;
        this._output = analyser;
      }
    }
    return this._context;
  }

  /** Buffers scheduled and not yet ended or stopped. */
  get pending() {
    return [...this._live()].length;
  }

  /**
   * The buffers still to play (not ended, not stopped), of `requestId` or all.
   * @param {string | null} [requestId]
   */
  *_live(requestId) {
    for (const e of this._entries) {
      if (e.ended || e.stoppedAt !== null) continue;
      if (requestId == null || e.requestId === requestId) yield e;
    }
  }

  /**
   * Milliseconds of audio scheduled and not played yet (of `requestId`, or all).
   * @param {string | null} [requestId]
   */
  queuedMs(requestId) {
    if (this._context === null) return 0;
    const now = this._context.currentTime;
    let queued = 0;
    for (const e of this._live(requestId)) {
      queued += Math.max(0, e.startAt + e.duration - Math.max(now, e.startAt));
    }
    return Math.round(queued * 1000);
  }

  /**
   * Schedule a chunk right after those already queued (after the jitter delay when the
   * queue has run dry).
   * @param {AudioBuffer | Float32Array | Float32Array[]} chunk  a buffer, or samples in
   *   [-1, 1]: one array (mono) or one per channel
   * @param {{requestId?: string | null, sampleRate?: number}} [options]  always pass
   *   the frame's sample_rate: servers differ
   * @returns {{startAt: number, duration: number}} when it plays, in context seconds
   */
  enqueue(chunk, { requestId = null, sampleRate = 24000 } = {}) {
    const context = this.context;
    let buffer = /** @type {AudioBuffer} */ (chunk);
    if (chunk instanceof Float32Array || Array.isArray(chunk)) {
      const channels = Array.isArray(chunk) ? chunk : [chunk];
      buffer = context.createBuffer(channels.length, channels[0].length, sampleRate);
      channels.forEach((samples, c) => buffer.getChannelData(c).set(samples));
    }
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(/** @type {AudioNode} */ (this._output));
    const now = context.currentTime;
    const startAt = this._cursor > now ? this._cursor : now + this.jitterMs / 1000;
    const entry = {
      source,
      requestId,
      startAt,
      duration: buffer.duration,
      stoppedAt: /** @type {number | null} */ (null),
      ended: false,
    };
    source.addEventListener("ended", () => {
      entry.ended = true;
    });
    source.start(startAt);
    this._cursor = startAt + buffer.duration;
    this._entries.push(entry);
    if (this._entries.length > 64) this.prune();
    return { startAt, duration: buffer.duration };
  }

  /**
   * Stop at once every buffer scheduled for `requestId`, or every buffer at all.
   * @param {string | null} [requestId]
   * @returns {number} how many buffers were stopped
   */
  stop(requestId) {
    if (this._context === null) return 0;
    const now = this._context.currentTime;
    let stopped = 0;
    for (const entry of [...this._live(requestId)]) {
      entry.stoppedAt = now;
      try {
        entry.source.stop(0);
      } catch {
        // already stopped
      }
      entry.source.disconnect();
      stopped += 1;
    }
    if (stopped) this.lastStopAt = now;
    const playing = [...this._live()];
    this._cursor = playing.length ? Math.max(...playing.map((e) => e.startAt + e.duration)) : now;
    return stopped;
  }

  /**
   * Milliseconds of `requestId`'s audio played so far: what interrupt() sends as
   * played_ms (it reads this itself for a spoken response).
   * @param {string | null} [requestId]
   */
  playedMs(requestId) {
    if (this._context === null) return 0;
    const now = this._context.currentTime;
    let played = 0;
    for (const [id, seconds] of this._prunedPlayed) {
      if (requestId == null || id === requestId) played += seconds;
    }
    for (const e of this._entries) {
      if (requestId != null && e.requestId !== requestId) continue;
      played += AudioPlayback._played(e, now);
    }
    return Math.round(played * 1000);
  }

  /** @param {{startAt: number, duration: number, stoppedAt: number | null}} e @param {number} now */
  static _played(e, now) {
    return Math.min(Math.max((e.stoppedAt ?? now) - e.startAt, 0), e.duration);
  }

  /**
   * Listen to the output for `windowMs` after the last stop, and resolve with the
   * milliseconds of sound heard after it: the time from the stop to the last non-silent
   * sample, beyond the render quantum in which the stop takes effect. 0 means the stop
   * was instant. Resolves with 0 when nothing was stopped, or no analyser exists.
   * @param {number} [windowMs]
   * @returns {Promise<number>}
   */
  measureAfterStop(windowMs = 300) {
    const analyser = this._analyser;
    const context = this._context;
    const stopAt = this.lastStopAt;
    if (analyser === null || context === null || stopAt === null) return Promise.resolve(0);
    const samples = new Float32Array(analyser.fftSize);
    const rate = context.sampleRate;
    const quantum = 128 / rate; // the Web Audio render quantum
    let heard = 0;
    return new Promise((resolve) => {
      const listen = () => {
        const now = context.currentTime;
        analyser.getFloatTimeDomainData(samples);
        let last = -1;
        for (let i = samples.length - 1; i >= 0; i--) {
          if (samples[i] !== 0) {
            last = i;
            break;
          }
        }
        if (last >= 0) {
          const at = now - (samples.length - 1 - last) / rate;
          heard = Math.max(heard, at - stopAt - 2 * quantum);
        }
        if (now - stopAt >= windowMs / 1000 || this.lastStopAt !== stopAt) {
          resolve(Math.max(0, Math.round(heard * 1000)));
        } else {
          setTimeout(listen, 15);
        }
      };
      listen();
    });
  }

  /** Forget buffers that finished playing (playedMs() still counts them). */
  prune() {
    const now = this._context?.currentTime ?? 0;
    const live = [];
    for (const e of this._entries) {
      if (!e.ended && e.stoppedAt === null) {
        live.push(e);
        continue;
      }
      const seconds = AudioPlayback._played(e, now);
      this._prunedPlayed.set(e.requestId, (this._prunedPlayed.get(e.requestId) ?? 0) + seconds);
    }
    this._entries = live;
    while (this._prunedPlayed.size > 256) {
      this._prunedPlayed.delete(this._prunedPlayed.keys().next().value ?? null);
    }
  }
}

/**
 * A connection to a trio-agent server, with optimistic interrupts, heartbeats and
 * reconnection.
 *
 * Events (all CustomEvent; `detail` in brackets):
 * - "status" [{state, sessionId, attempt, delayMs, reason}]: the connection state changed
 * - "session" [{session, sessionId, reconnected}]: a SESSION frame opened a session
 * - "stream" [{response, delta, seq, startMs}]: a delta was delivered
 * - "audio" [{response, frame}]: an AUDIO frame was delivered (and queued for playback
 *   unless playAudio is false)
 * - "dropped" [{response, stale}]: a frame of a response ended by interrupt() was dropped
 * - "done" [{response, payload}]: a response ended (server DONE, interrupt, disconnect)
 * - "interrupted" [{responses, msgId, reason}]: interrupt() ended responses locally
 * - "ack" [{msgId, payload, ackMs, late}]: an INTERRUPT_ACK arrived
 * - "ack-timeout" [{msgId, timeoutMs, requestIds}]: no ACK within ackTimeoutMs
 * - "error" [{code, message, requestId, ref}]: an ERROR frame, or a protocol violation
 *   by the server (code "PROTOCOL_VIOLATION")
 * - "heartbeat" [{rttMs}]: a HEARTBEAT reply measured the round trip
 * - "reconnecting" [{sessionId, attempt, attempts, delayMs, reason}]: the connection
 *   dropped and the session will be resumed; fired before each attempt
 * - "resumed" [{sessionId, attempt, requests, interrupts}]: RESUMED came; the responses
 *   continue (requests: the server's "running"/"done" per request id)
 * - "resume_failed" [{sessionId, code, reason, attempts}]: the session could not be
 *   resumed (code RESUME_UNKNOWN or RESUME_DENIED, or null when the attempts or the
 *   window ran out); it ends as a lost connection does without resume
 */
export class AgentClient extends EventTarget {
  /** @param {string} url  ws:// or wss:// URL of the agent endpoint @param {AgentClientOptions} [options] */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 15000;
    this.heartbeatMs = options.heartbeatMs ?? 10000;
    this.heartbeatTimeoutMs =
      options.heartbeatTimeoutMs ?? Math.max(2 * this.heartbeatMs, 5000);
    this.reconnect = options.reconnect ?? true;
    this.reconnectMinMs = options.reconnectMinMs ?? 250;
    this.reconnectMaxMs = options.reconnectMaxMs ?? 10000;
    this.resume = options.resume ?? true;
    this.resumeAttempts = options.resumeAttempts ?? 6;
    this._token = options.token ?? null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    /** The playback queue AUDIO frames play through, and interrupt() silences. */
    this.audio = options.audio ?? new AudioPlayback();
    /** Play AUDIO frames through `audio` as they arrive (else: only "audio" events). */
    this.playAudio = options.playAudio ?? true;
    /** @type {ClientStats} */
    this.stats = {
      rttMs: null,
      lastAckMs: null,
      droppedAfterInterrupt: 0,
      staleAfterAck: 0,
      interrupts: 0,
      acks: 0,
      ackTimeouts: 0,
      lateAcks: 0,
      framesReceived: 0,
      reconnects: 0,
      violations: 0,
      audioFrames: 0,
      audioDropped: 0,
      resumes: 0,
      resumeFailures: 0,
      duplicatesDropped: 0,
    };
    /** @type {ConnectionState} */
    this.state = "idle";
    /** @type {SessionPayload | null} */
    this.session = null;
    /** @type {string | null} */
    this.sessionId = null;
    /** @type {WebSocket | null} */
    this._ws = null;
    /** @type {Map<string, AgentResponse>} responses whose server DONE has not come */
    this._responses = new Map();
    /** @type {Map<string, PendingInterrupt>} INTERRUPTs awaiting their ACK (or queued) */
    this._interrupts = new Map();
    /** @type {Map<string, number>} INTERRUPTs whose ACK timed out: msg_id -> sent at (bounded) */
    this._timedOut = new Map();
    /** @type {Map<string, number>} outstanding HEARTBEATs: msg_id -> sent at */
    this._heartbeats = new Map();
    this._heartbeatTimer = /** @type {any} */ (null);
    this._silenceTimer = /** @type {any} */ (null);
    this._reconnectTimer = /** @type {any} */ (null);
    this._attempt = 0;
    this._closedByUser = false;
    this._everOpened = false;
    this._msgCount = 0;
    this._requestCount = 0;
    this._idPrefix = Math.random().toString(36).slice(2, 8);
    /** @type {{resolve: (s: SessionPayload) => void, reject: (e: Error) => void} | null} */
    this._connecting = null;
    /** @type {{token: string, windowS: number} | null} the live session's resume offer */
    this._offer = null;
    /**
     * The session being resumed after a drop: its id and offer, the deadline of its window,
     * the attempts made, and the RESUME's msg_id once sent. Null when not resuming.
     * @type {{sessionId: string, offer: {token: string, windowS: number}, deadline: number, attempt: number, msgId: string | null} | null}
     */
    this._resuming = null;
  }

  /** Responses still streaming. */
  get streaming() {
    return [...this._responses.values()].filter((r) => !r.ended);
  }

  /**
   * Open the connection and wait for the SESSION frame.
   * Rejects if the first connection fails; later losses reconnect by themselves.
   * @returns {Promise<SessionPayload>}
   */
  connect() {
    if (this.state === "open" && this.session) return Promise.resolve(this.session);
    this._closedByUser = false;
    return new Promise((resolve, reject) => {
      this._connecting = { resolve, reject };
      if (this._ws === null) this._open();
    });
  }

  /** Close the connection for good: no reconnect; responses still streaming end. */
  close() {
    this._closedByUser = true;
    clearTimeout(this._reconnectTimer);
    this._resuming = null;
    this._offer = null;
    const ws = this._ws;
    this._teardown("closed by the client");
    if (ws) ws.close(1000, "client closed");
    this._setState("closed", { reason: "closed by the client" });
  }

  /**
   * Start a request. Returns at once; the response streams into the returned object.
   * @param {string} input
   * @param {{agent?: string, options?: object, timeoutS?: number, requestId?: string}} [params]
   * @returns {AgentResponse}
   * @throws {NotConnectedError} when no session is open
   */
  request(input, { agent, options, timeoutS, requestId } = {}) {
    const ws = this._ws;
    if (this.state !== "open" || ws === null) throw new NotConnectedError();
    const id = requestId ?? `${this._idPrefix}-${++this._requestCount}`;
    const msgId = this._nextMsgId();
    const response = new AgentResponse(id, agent ?? null, msgId);
    const voice = /** @type {any} */ (options)?.voice;
    response.voice = voice != null && voice !== false;
    this._responses.set(id, response);
    /** @type {Record<string, unknown>} */
    const payload = { input };
    if (agent != null) payload.agent = agent;
    if (options != null) payload.options = options;
    if (timeoutS != null) payload.timeout_s = timeoutS;
    this._send({ msg_type: "REQUEST", msg_id: msgId, request_id: id, payload });
    return response;
  }

  /**
   * Interrupt one response, or all of them (no requestId). Optimistic: the targeted
   * responses end locally before this returns (r.done resolves with status
   * "interrupted"), their audio stops, and their late frames are dropped.
   *
   * Interrupting one spoken response sends played_ms: `extra.playedMs`, or else how
   * much of its audio has played (`audio.playedMs(requestId)`, read right after the
   * stop: the position where playback stopped, which is exactly what was heard; read
   * before it, the audio clock could move on between the reading and the stop).
   * An interrupt-all never sends it: the server would ignore it.
   * @param {string | null} [requestId]
   * @param {string} [reason]
   * @param {{playedMs?: number}} [extra]  playback position of a spoken reply
   * @returns {Promise<AckPayload>} the ACK; rejects with AckTimeoutError after
   *   ackTimeoutMs, or NotConnectedError if the connection is lost first
   */
  interrupt(requestId = null, reason = DEFAULT_REASON, extra = {}) {
    // Cut, not refused: a stop must never fail on its label. By code points, so a
    // surrogate pair is never split.
    reason = Array.from(String(reason)).slice(0, MAX_REASON_CHARS).join("");
    const msgId = this._nextMsgId();
    let playedMs = requestId == null ? null : (extra.playedMs ?? null);
    const measurePlayed =
      requestId != null && playedMs === null && this._responses.get(requestId)?.spoken === true;
    const targets =
      requestId == null
        ? this.streaming
        : [this._responses.get(requestId)].filter((r) => r !== undefined && !r.ended);
    const cut = /** @type {AgentResponse[]} */ (targets);
    for (const response of cut) {
      response.cutBy = msgId;
      this._finish(response, {
        status: "interrupted",
        interrupted: true,
        reason,
        frames: response.frames,
        cancelled_by: msgId,
        local: true,
      });
    }
    if (requestId == null) this.audio.stop();
    else this.audio.stop(requestId);
    if (measurePlayed) playedMs = this.audio.playedMs(requestId);
    if (cut.length) {
      this._emit("interrupted", { responses: cut, msgId, reason });
    }
    // While a session is being resumed the INTERRUPT waits, and goes out right after
    // RESUMED (its ACK timeout starts then); if the resume fails it rejects with
    // NotConnectedError.
    const queued = this._resuming !== null;
    if (!queued && (this.state !== "open" || this._ws === null)) {
      return Promise.reject(new NotConnectedError());
    }
    /** @type {Record<string, unknown>} */
    const payload = { reason };
    if (playedMs !== null) payload.played_ms = Math.max(0, Math.round(playedMs));
    /** @type {Record<string, unknown>} */
    const frame = { msg_type: "INTERRUPT", msg_id: msgId, payload };
    if (requestId != null) frame.request_id = requestId;
    const requestIds = cut.map((r) => r.requestId);
    const ack = new Promise((resolve, reject) => {
      const pending = { sentAt: now(), timer: null, requestIds, resolve, reject, frame, sent: false, reason };
      this._interrupts.set(msgId, pending);
      if (!queued) this._sendInterrupt(msgId, pending);
    });
    return /** @type {Promise<AckPayload>} */ (ack);
  }

  /**
   * Send an INTERRUPT (again, after a resume, if its first sending may have been lost)
   * and start its ACK timeout unless it runs already.
   * @param {string} msgId @param {PendingInterrupt} pending
   */
  _sendInterrupt(msgId, pending) {
    if (!pending.sent) {
      pending.sent = true;
      pending.sentAt = now();
      this.stats.interrupts += 1;
    }
    if (pending.timer === null) {
      pending.timer = setTimeout(() => this._ackTimedOut(msgId), this.ackTimeoutMs);
    }
    this._send(pending.frame);
  }

  // ---------------------------------------------------------------- connection

  _open() {
    clearTimeout(this._reconnectTimer);
    this._setState(this._everOpened ? "reconnecting" : "connecting", {
      attempt: this._resuming?.attempt ?? this._attempt,
    });
    const protocols = this._token ? [PROTOCOL_NAME, TOKEN_PREFIX + this._token] : undefined;
    let ws;
    try {
      ws = new this._WebSocket(this.url, protocols);
    } catch (error) {
      this._connectFailed(/** @type {Error} */ (error));
      return;
    }
    this._ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onmessage = (event) => {
      if (this._ws === ws) this._onMessage(event.data);
    };
    ws.onclose = (event) => {
      if (this._ws === ws) this._lost(closedByTheServer(event), event.code);
    };
    ws.onerror = () => {
      // Always followed by "close", which does the work.
    };
  }

  /** @param {Error} error */
  _connectFailed(error) {
    this._ws = null;
    if (this._resuming !== null && !this._closedByUser) {
      this._resumeLater(error.message);
      return;
    }
    if (this._everOpened && this.reconnect && !this._closedByUser) {
      this._scheduleReconnect(error.message);
      return;
    }
    const connecting = this._connecting;
    this._connecting = null;
    this._setState("closed", { reason: error.message });
    if (connecting) connecting.reject(new NotConnectedError(`could not connect: ${error.message}`));
  }

  /**
   * The connection is gone (closed by the server, network, or no heartbeat reply).
   * A drop of a session the server offered to resume keeps the responses and pending
   * interrupts and resumes; anything else ends them, as protocol v1 does.
   * @param {string} reason @param {number | null} [code]  the close code, when one came
   */
  _lost(reason, code = null) {
    const ws = this._ws;
    const resumable =
      this.resume &&
      this._everOpened &&
      !this._closedByUser &&
      (this._resuming !== null || this._offer !== null) &&
      (code === null || !FINAL_CLOSE_CODES.has(code));
    if (resumable || this._resuming !== null) {
      this._detach();
    } else {
      this._teardown(`connection lost: ${reason}`);
      // The session is over, and its resume offer with it: a reconnect attempt that
      // fails next (the server still down) must not try to resume it.
      this._offer = null;
    }
    dropSocket(ws);
    if (this._closedByUser) return;
    if (resumable) {
      this._resumeLater(reason);
      return;
    }
    if (this._resuming !== null) {
      this._resumeFailed(null, reason);
      return;
    }
    if (!this._everOpened) {
      this._connectFailed(new Error(reason));
      return;
    }
    if (this.reconnect) this._scheduleReconnect(reason);
    else this._setState("closed", { reason });
  }

  /**
   * Try the next connection of a resume, after the reconnect backoff; give the session up
   * when the attempts run out or the next one would come after the server's window.
   * @param {string} reason
   */
  _resumeLater(reason) {
    let resuming = this._resuming;
    if (resuming === null) {
      const offer = /** @type {{token: string, windowS: number}} */ (this._offer);
      resuming = {
        sessionId: /** @type {string} */ (this.sessionId),
        offer,
        deadline: Date.now() + offer.windowS * 1000,
        attempt: 0,
        msgId: null,
      };
      this._resuming = resuming;
      this._offer = null;
      // No ACK can come while disconnected: the resume's attempts and window bound the
      // wait, and each ACK timeout starts again when RESUMED comes (_sendInterrupt).
      for (const pending of this._interrupts.values()) {
        clearTimeout(pending.timer);
        pending.timer = null;
      }
    }
    resuming.msgId = null;
    if (resuming.attempt >= this.resumeAttempts) {
      this._resumeFailed(null, `no resume after ${resuming.attempt} attempts (${reason})`);
      return;
    }
    const base = Math.min(this.reconnectMaxMs, this.reconnectMinMs * 2 ** resuming.attempt);
    const delayMs = Math.round(base / 2 + (Math.random() * base) / 2);
    if (Date.now() + delayMs >= resuming.deadline) {
      this._resumeFailed(null, `the resume window of ${resuming.offer.windowS} s ran out (${reason})`);
      return;
    }
    resuming.attempt += 1;
    const attempt = resuming.attempt;
    this._setState("reconnecting", { attempt, delayMs, reason, resuming: true });
    this._emit("reconnecting", {
      sessionId: resuming.sessionId,
      attempt,
      attempts: this.resumeAttempts,
      delayMs,
      reason,
    });
    this._reconnectTimer = setTimeout(() => this._open(), delayMs);
  }

  /**
   * The session could not be resumed: it ends as a lost connection does without resume
   * (responses "disconnected", pending interrupts rejected, then a new session).
   * @param {string | null} code  the server's ERROR code, or null
   * @param {string} reason
   */
  _resumeFailed(code, reason) {
    const resuming = this._resuming;
    if (resuming === null) return;
    this._resuming = null;
    this._offer = null;
    clearTimeout(this._reconnectTimer);
    const ws = this._ws;
    this._teardown(`connection lost: ${reason}`);
    dropSocket(ws);
    this.stats.resumeFailures += 1;
    this._emit("resume_failed", {
      sessionId: resuming.sessionId,
      code,
      reason,
      attempts: resuming.attempt,
    });
    if (this.reconnect) this._scheduleReconnect(reason);
    else this._setState("closed", { reason });
  }

  /** @param {string} reason */
  _scheduleReconnect(reason) {
    const base = Math.min(this.reconnectMaxMs, this.reconnectMinMs * 2 ** this._attempt);
    const delayMs = Math.round(base / 2 + (Math.random() * base) / 2);
    this._attempt += 1;
    this._setState("reconnecting", { attempt: this._attempt, delayMs, reason });
    this._reconnectTimer = setTimeout(() => this._open(), delayMs);
  }

  /** Forget the connection, keep the session (its responses, its pending interrupts). */
  _detach() {
    this._ws = null;
    clearInterval(this._heartbeatTimer);
    clearTimeout(this._silenceTimer);
    this._heartbeatTimer = this._silenceTimer = null;
    this._heartbeats.clear();
  }

  /** End everything that belonged to the session that is going away. @param {string} reason */
  _teardown(reason) {
    this._detach();
    for (const response of this._responses.values()) {
      this._finish(response, {
        status: "disconnected",
        interrupted: false,
        reason,
        frames: response.frames,
        local: true,
      });
    }
    this._responses.clear();
    for (const [msgId, pending] of this._interrupts) {
      clearTimeout(pending.timer);
      pending.reject(new NotConnectedError(`${reason} before the ACK of ${msgId}`));
    }
    this._interrupts.clear();
  }

  /** @param {ConnectionState} state @param {Record<string, unknown>} [detail] */
  _setState(state, detail = {}) {
    this.state = state;
    this._emit("status", { state, sessionId: this.sessionId, ...detail });
  }

  // ---------------------------------------------------------------- frames in

  /** @param {unknown} data */
  _onMessage(data) {
    this.stats.framesReceived += 1;
    const handshake = this._resuming !== null;
    if (typeof data !== "string") {
      if (handshake) this._violation("an AUDIO frame before RESUMED");
      else this._onAudio(data);
      return;
    }
    /** @type {any} */
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this._violation("a frame that is not JSON");
      return;
    }
    if (handshake && !["SESSION", "RESUMED", "ERROR", "HEARTBEAT"].includes(frame?.msg_type)) {
      // Nothing about a resumed request comes before RESUMED (docs/protocol.md).
      this._violation(`a ${frame?.msg_type} frame before RESUMED`);
      return;
    }
    switch (frame?.msg_type) {
      case "RESUMED":
        return this._onResumed(frame);
      case "STREAM":
        return this._onStream(frame);
      case "DONE":
        return this._onDone(frame);
      case "INTERRUPT_ACK":
        return this._onAck(frame);
      case "ERROR":
        return this._onError(frame);
      case "HEARTBEAT":
        return this._onHeartbeat(frame);
      case "SESSION":
        return this._onSession(frame);
      default:
      // Later protocol versions only add message types: ignore what we do not know.
    }
  }

  /** @param {any} frame */
  _onSession(frame) {
    if (this._resuming !== null) {
      this._sendResume();
      return;
    }
    const reconnected = this._everOpened;
    // The token stays private: the page sees only the window.
    this._offer = this.resume ? readOffer(frame.payload) : null;
    const { resume, ...session } = frame.payload ?? {};
    if (resume != null) session.resume = { window_s: resume.window_s };
    this.session = /** @type {SessionPayload} */ (session);
    this.sessionId = frame.session_id;
    this._everOpened = true;
    if (reconnected) this.stats.reconnects += 1;
    this._attempt = 0;
    this._setState("open");
    this._emit("session", { session: this.session, sessionId: this.sessionId, reconnected });
    const connecting = this._connecting;
    this._connecting = null;
    if (connecting && this.session) connecting.resolve(this.session);
    if (this.heartbeatMs > 0) {
      this._heartbeat();
      this._heartbeatTimer = setInterval(() => this._heartbeat(), this.heartbeatMs);
    }
  }

  /**
   * The first frame on a new connection of a session being resumed: RESUME, naming the
   * last seq held of every response still expecting frames (a response cut locally too:
   * its DONE is still to come).
   */
  _sendResume() {
    const resuming = /** @type {NonNullable<AgentClient["_resuming"]>} */ (this._resuming);
    const msgId = this._nextMsgId();
    resuming.msgId = msgId;
    /** @type {Record<string, number>} */
    const lastSeq = {};
    /** @type {Record<string, number>} */
    const lastAudioSeq = {};
    for (const [requestId, response] of this._responses) {
      lastSeq[requestId] = response._lastSeq;
      if (response.spoken || response._lastAudioSeq >= 0) lastAudioSeq[requestId] = response._lastAudioSeq;
    }
    /** @type {Record<string, unknown>} */
    const payload = { token: resuming.offer.token, last_seq: lastSeq };
    if (Object.keys(lastAudioSeq).length) payload.last_audio_seq = lastAudioSeq;
    this._send({ msg_type: "RESUME", msg_id: msgId, session_id: resuming.sessionId, payload });
    // A connection that gives SESSION but never RESUMED is as dead as a silent one.
    this._silenceTimer = setTimeout(
      () => this._lost(`no RESUMED within ${this.heartbeatTimeoutMs} ms`),
      this.heartbeatTimeoutMs,
    );
  }

  /** @param {any} frame */
  _onResumed(frame) {
    const resuming = this._resuming;
    if (resuming === null || resuming.msgId === null || frame.ref !== resuming.msgId) {
      this._violation(`a RESUMED for ${frame.ref}, which is no RESUME of this connection`);
      return;
    }
    clearTimeout(this._silenceTimer);
    this._silenceTimer = null;
    this._resuming = null;
    const payload = frame.payload ?? {};
    this._offer = this.resume ? readOffer(payload) : null; // the token rotates on every resume
    this.stats.resumes += 1;
    this._attempt = 0;
    /** @type {Record<string, string>} */
    const requests = payload.requests ?? {};
    for (const [requestId, response] of [...this._responses]) {
      if (requestId in requests) continue;
      // The server no longer knows it: nothing more will come of it.
      this._responses.delete(requestId);
      this._finish(response, {
        status: "disconnected",
        interrupted: false,
        reason: "connection lost: the resumed session no longer knows this request",
        frames: response.frames,
        local: true,
      });
    }
    /** @type {Record<string, string[]>} */
    const interrupts = payload.interrupts ?? {};
    for (const [msgId, cut] of Object.entries(interrupts)) {
      const pending = this._interrupts.get(msgId);
      const ids = Array.isArray(cut) ? cut : [];
      // Not marked ackSeen: the replay may still bring frames written before the cut.
      this._acknowledge(msgId, {
        interrupted: ids,
        interrupted_count: ids.length,
        reason: pending?.reason ?? DEFAULT_REASON,
        targets: Object.fromEntries(ids.map((id) => [id, "interrupted"])),
        resumed: true,
      });
    }
    // Queued while disconnected, or sent and lost with the connection (the server did not
    // process it, or RESUMED would name it): out now, before anything else.
    for (const [msgId, pending] of this._interrupts) this._sendInterrupt(msgId, pending);
    this._setState("open", { resumed: true });
    const connecting = this._connecting;
    this._connecting = null;
    if (connecting && this.session) connecting.resolve(this.session);
    this._emit("resumed", {
      sessionId: this.sessionId,
      attempt: resuming.attempt,
      requests: { ...requests },
      interrupts: { ...interrupts },
    });
    if (this.heartbeatMs > 0) {
      this._heartbeat();
      this._heartbeatTimer = setInterval(() => this._heartbeat(), this.heartbeatMs);
    }
  }

  /**
   * A frame whose seq was received already (a resume's replay may overlap what arrived
   * before the drop) is dropped: no delta twice. Without a resume it breaks the protocol.
   * @param {AgentResponse} response @param {unknown} seq @param {"STREAM" | "AUDIO"} kind
   * @returns {boolean} true when the frame is a duplicate
   */
  _duplicate(response, seq, kind) {
    if (typeof seq !== "number") return false;
    const audio = kind === "AUDIO";
    const last = audio ? response._lastAudioSeq : response._lastSeq;
    if (seq > last) {
      if (audio) response._lastAudioSeq = seq;
      else response._lastSeq = seq;
      return false;
    }
    this.stats.duplicatesDropped += 1;
    if (this.stats.resumes === 0) this._violation(`${kind} seq ${seq} of ${response.requestId} came twice`);
    return true;
  }

  /** @param {any} frame */
  _onStream(frame) {
    const response = this._responses.get(frame.request_id);
    if (response === undefined) {
      this._violation(`a STREAM frame for unknown request ${frame.request_id}`);
      return;
    }
    if (this._duplicate(response, frame.payload?.seq, "STREAM")) return;
    if (response.ended) {
      const stale = response.ackSeen;
      if (stale) this.stats.staleAfterAck += 1;
      else this.stats.droppedAfterInterrupt += 1;
      this._emit("dropped", { response, stale });
      if (stale) this._violation(`a STREAM frame of ${response.requestId} after the ACK that cut it`);
      return;
    }
    const { seq, delta } = frame.payload;
    const startMs = frame.payload.start_ms ?? null;
    if (seq !== response.frames) {
      this._violation(`STREAM seq ${seq} of ${response.requestId}, expected ${response.frames}`);
    }
    response._deliver(seq, delta, startMs);
    this._emit("stream", { response, delta, seq, startMs });
  }

  /** A binary message: in protocol v1.1, an AUDIO frame. @param {unknown} data */
  _onAudio(data) {
    if (!(data instanceof ArrayBuffer || ArrayBuffer.isView(data))) {
      this._violation("a binary frame that is not an ArrayBuffer");
      return;
    }
    /** @type {AudioFrame} */
    let frame;
    try {
      frame = parseAudioFrame(data);
    } catch (error) {
      this._violation(/** @type {Error} */ (error).message);
      return;
    }
    const { request_id: requestId, seq, sample_rate: sampleRate } = frame.header;
    const response = this._responses.get(requestId);
    if (response === undefined) {
      this._violation(`an AUDIO frame for unknown request ${requestId}`);
      return;
    }
    if (this._duplicate(response, seq, "AUDIO")) return;
    if (response.ended) {
      this.stats.audioDropped += 1;
      this._emit("dropped", { response, stale: response.ackSeen, audio: true });
      if (response.ackSeen) {
        this.stats.staleAfterAck += 1;
        this._violation(`an AUDIO frame of ${requestId} after the ACK that cut it`);
      }
      return;
    }
    if (seq !== response.audioFrames) {
      this._violation(`AUDIO seq ${seq} of ${requestId}, expected ${response.audioFrames}`);
    }
    this.stats.audioFrames += 1;
    response._deliverAudio(frame);
    if (this.playAudio) this.audio.enqueue(frame.channels, { requestId, sampleRate });
    this._emit("audio", { response, frame });
  }

  /** @param {any} frame */
  _onDone(frame) {
    const response = this._responses.get(frame.request_id);
    if (response === undefined) {
      this._violation(`a DONE for unknown request ${frame.request_id}`);
      return;
    }
    this._responses.delete(frame.request_id);
    if (response.ended) {
      response.serverDone = frame.payload;
      response.dispatchEvent(new CustomEvent("server-done", { detail: frame.payload }));
      return;
    }
    this._finish(response, frame.payload);
  }

  /** @param {any} frame */
  _onAck(frame) {
    const payload = frame.payload;
    for (const requestId of payload.interrupted ?? []) {
      const response = this._responses.get(requestId);
      if (response) response.ackSeen = true;
    }
    this._acknowledge(frame.ref, payload);
  }

  /**
   * Resolve the INTERRUPT `msgId` with its ACK: from an INTERRUPT_ACK, or from RESUMED
   * when the ACK was lost with the connection.
   * @param {string} msgId @param {any} payload
   */
  _acknowledge(msgId, payload) {
    const pending = this._interrupts.get(msgId);
    if (pending === undefined) {
      const sentAt = this._timedOut.get(msgId);
      if (sentAt !== undefined) {
        this._timedOut.delete(msgId);
        this.stats.lateAcks += 1;
        const ackMs = now() - sentAt;
        this.stats.lastAckMs = ackMs;
        this._emit("ack", { msgId, payload: { ...payload, msgId, ackMs }, ackMs, late: true });
      } else if (!payload.resumed) {
        // RESUMED may name an INTERRUPT whose ACK did arrive: nothing to do then.
        this._violation(`an INTERRUPT_ACK for unknown INTERRUPT ${msgId}`);
      }
      return;
    }
    this._interrupts.delete(msgId);
    clearTimeout(pending.timer);
    const ackMs = now() - pending.sentAt;
    this.stats.acks += 1;
    this.stats.lastAckMs = ackMs;
    const result = { ...payload, msgId, ackMs };
    this._emit("ack", { msgId, payload: result, ackMs, late: false });
    pending.resolve(result);
  }

  /** @param {any} frame */
  _onError(frame) {
    const { code, message } = frame.payload ?? {};
    const ref = frame.ref ?? null;
    const requestId = frame.request_id ?? null;
    const refused = requestId !== null ? this._responses.get(requestId) : undefined;
    if (refused !== undefined && refused.msgId === ref && refused.frames === 0) {
      // The server refused this REQUEST: it never started.
      this._responses.delete(requestId);
      this._finish(refused, {
        status: "failed",
        interrupted: false,
        frames: 0,
        reason: message,
        error: { code, message },
        local: true,
      });
    }
    const interrupt = ref !== null ? this._interrupts.get(ref) : undefined;
    if (interrupt !== undefined) {
      this._interrupts.delete(ref);
      clearTimeout(interrupt.timer);
      interrupt.reject(new AgentClientError(`INTERRUPT refused: ${message}`, code));
    }
    this._emit("error", { code, message, requestId, ref });
    const resuming = this._resuming;
    if (resuming !== null && resuming.msgId !== null && (ref === resuming.msgId || RESUME_REFUSALS.has(code))) {
      this._resumeFailed(code ?? null, `RESUME refused: ${message}`);
    }
  }

  /** @param {any} frame */
  _onHeartbeat(frame) {
    const sentAt = this._heartbeats.get(frame.ref);
    if (sentAt === undefined) return;
    // Replies come in order: this one answers every older HEARTBEAT too.
    for (const [msgId, at] of this._heartbeats) if (at <= sentAt) this._heartbeats.delete(msgId);
    clearTimeout(this._silenceTimer);
    this._silenceTimer = null;
    this.stats.rttMs = now() - sentAt;
    this._emit("heartbeat", { rttMs: this.stats.rttMs });
  }

  // ---------------------------------------------------------------- frames out

  _heartbeat() {
    const msgId = this._nextMsgId();
    this._heartbeats.set(msgId, now());
    this._send({ msg_type: "HEARTBEAT", msg_id: msgId });
    if (this._silenceTimer === null) {
      // Armed by the oldest unanswered HEARTBEAT; any reply disarms it.
      this._silenceTimer = setTimeout(
        () => this._lost(`no HEARTBEAT reply within ${this.heartbeatTimeoutMs} ms`),
        this.heartbeatTimeoutMs,
      );
    }
  }

  /** @param {string} msgId */
  _ackTimedOut(msgId) {
    const pending = this._interrupts.get(msgId);
    if (pending === undefined) return;
    this._interrupts.delete(msgId);
    this._timedOut.set(msgId, pending.sentAt);
    const oldest = this._timedOut.keys().next().value;
    if (this._timedOut.size > 256 && oldest !== undefined) this._timedOut.delete(oldest);
    this.stats.ackTimeouts += 1;
    const error = new AckTimeoutError(msgId, this.ackTimeoutMs, pending.requestIds);
    this._emit("ack-timeout", {
      msgId,
      timeoutMs: this.ackTimeoutMs,
      requestIds: pending.requestIds,
    });
    pending.reject(error);
  }

  /** @param {Record<string, unknown>} frame */
  _send(frame) {
    frame.ts = Date.now();
    /** @type {WebSocket} */ (this._ws).send(JSON.stringify(frame));
  }

  _nextMsgId() {
    return `c${++this._msgCount}`;
  }

  /** @param {AgentResponse} response @param {DonePayload} payload */
  _finish(response, payload) {
    if (response._end(payload)) this._emit("done", { response, payload });
  }

  /** @param {string} message */
  _violation(message) {
    this.stats.violations += 1;
    this._emit("error", { code: "PROTOCOL_VIOLATION", message, requestId: null, ref: null });
  }

  /** @param {string} type @param {object} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * Close codes after which a session is not resumed: the page's own close (1000), the
 * server going away (1001, it sent DONE{shutdown} first), a policy refusal (1008: bad
 * input, or RESUME_UNKNOWN/RESUME_DENIED), and 4001 "resumed elsewhere" (another
 * connection holds the session now, with the only valid token). Not exported: these are
 * plain WebSocket codes and the protocol's own, not new wire constants.
 */
const FINAL_CLOSE_CODES = new Set([1000, 1001, 1008, 4001]);

/** ERROR codes that refuse a RESUME (each spelled as in trio_agent.protocol's ErrorCode). */
const RESUME_REFUSALS = new Set(["RESUME_UNKNOWN", "RESUME_DENIED"]);

/** Stop listening to a socket that no longer speaks for the session, and close it. @param {WebSocket | null} ws */
function dropSocket(ws) {
  if (ws === null) return;
  ws.onmessage = ws.onclose = ws.onerror = null;
  try {
    ws.close(4000, "connection lost");
  } catch {
    // already closing
  }
}

/**
 * Why the server closed the socket, in words: its close code and, when it gave one, its
 * own reason, e.g. "closed by the server (code 1001: server shutting down)".
 * @param {{code: number, reason?: string}} event  the socket's "close" event
 */
function closedByTheServer(event) {
  const reason = typeof event.reason === "string" ? event.reason.trim() : "";
  return `closed by the server (code ${event.code}${reason ? `: ${reason}` : ""})`;
}

/**
 * The resume offer of a SESSION or RESUMED payload, or null when there is none usable.
 * @param {any} payload @returns {{token: string, windowS: number} | null}
 */
function readOffer(payload) {
  const offer = payload?.resume;
  if (offer == null || typeof offer.token !== "string" || offer.token === "") return null;
  const windowS = Number(offer.window_s);
  return Number.isFinite(windowS) && windowS > 0 ? { token: offer.token, windowS } : null;
}

/** Milliseconds from a monotonic clock. */
function now() {
  return globalThis.performance ? performance.now() : Date.now();
}
