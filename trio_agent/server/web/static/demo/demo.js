// The demo page: a barge-in chat on agent-client.js.
//
// What it shows: sending while a reply streams interrupts it (optimistically: the old
// reply stops at its last delivered word at once, the new one starts at once), and the
// INTERRUPT_ACK then confirms what the server cut. Text is rendered once per animation
// frame, never per frame received, so rendering never competes with the socket.
//
// Speech: with "Speak replies" on, requests ask for a voice and the reply's AUDIO plays
// through the client's AudioContext (a small jitter buffer); a barge-in stops every
// scheduled buffer at once and sends played_ms, and the reply then shows what was heard.
// The panel shows the audio queued on the client, and the milliseconds of sound the
// page *heard* after the last interrupt (an analyser listens to the output): 0.
//
// URL parameters: ?speak=1 turns speech on; ?agent=NAME picks the agent; ?ack_timeout_ms=N, ?heartbeat_ms=N and
// ?reconnect_max_ms=N tune the client; #token=SECRET passes a server token (a fragment never reaches the
// server's logs). The client is window.agentClient, for the browser's console.
//
// A dropped connection of a session the server offers to resume (protocol v1.2) is resumed
// by the client: the reply goes on where it stopped, and the header says "reconnecting…",
// then "resumed" (or why it failed) in a reserved spot, so nothing on the page moves.

import { AckTimeoutError, AgentClient, NotConnectedError } from "/static/agent-client.js";

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const promptBox = /** @type {HTMLTextAreaElement} */ ($("prompt"));
const sendButton = /** @type {HTMLButtonElement} */ ($("send"));
const stopButton = /** @type {HTMLButtonElement} */ ($("stop"));
const agentSelect = /** @type {HTMLSelectElement} */ ($("agent"));
const wordsInput = /** @type {HTMLInputElement} */ ($("words"));
const speedInput = /** @type {HTMLInputElement} */ ($("speed"));
const speakBox = /** @type {HTMLInputElement} */ ($("speak"));
const log = $("log");

const query = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));

/** @param {string | null} raw @param {number} fallback */
function number(raw, fallback) {
  const value = raw === null || raw === "" ? NaN : Number(raw);
  return Number.isFinite(value) && value >= 0 ? value : fallback;
}

const websocketPath =
  document.querySelector('meta[name="trio-agent-websocket-path"]')?.getAttribute("content") ||
  "/ws";
const scheme = location.protocol === "https:" ? "wss" : "ws";
const client = new AgentClient(`${scheme}://${location.host}${websocketPath}`, {
  ackTimeoutMs: number(query.get("ack_timeout_ms"), 15000),
  heartbeatMs: number(query.get("heartbeat_ms"), 5000),
  reconnectMaxMs: number(query.get("reconnect_max_ms"), 10000),
  token: fragment.get("token") ?? undefined,
});
Object.assign(window, { agentClient: client });
speakBox.checked = query.get("speak") === "1";

/** Milliseconds of sound heard after the last interrupt (null: none measured yet). */
let playedAfterMs = /** @type {number | null} */ (null);

// ------------------------------------------------------------------ rendering

/** @type {Set<() => void>} */
const dirty = new Set();
let frameRequested = false;

/** Render `paint` at the next animation frame (once, however often it is asked). */
function schedule(/** @type {() => void} */ paint) {
  dirty.add(paint);
  if (!frameRequested) {
    frameRequested = true;
    requestAnimationFrame(() => {
      frameRequested = false;
      const work = [...dirty];
      dirty.clear();
      for (const paint of work) paint();
    });
  }
}

function paintFigures() {
  const { rttMs, lastAckMs, droppedAfterInterrupt, staleAfterAck, ackTimeouts } = client.stats;
  $("rtt").textContent = rttMs === null ? "" : rttMs.toFixed(1);
  $("ack-ms").textContent = lastAckMs === null ? "" : lastAckMs.toFixed(1);
  $("dropped").textContent = String(droppedAfterInterrupt);
  $("stale").textContent = String(staleAfterAck);
  $("stale").classList.toggle("bad", staleAfterAck > 0);
  $("ack-timeouts").textContent = String(ackTimeouts);
  $("session").textContent = client.sessionId ?? "";
  $("session").title = client.sessionId ?? "";
  paintAudio();
}

function paintAudio() {
  $("audio-queued").textContent = String(client.audio._context ? client.audio.queuedMs() : 0);
  $("played-after").textContent = playedAfterMs === null ? "" : String(playedAfterMs);
  $("played-after").classList.toggle("bad", (playedAfterMs ?? 0) > 0);
}
// The queue drains as it plays, with no event to say so: repaint it while it plays.
setInterval(() => {
  if (client.audio.pending || $("audio-queued").textContent !== "0") schedule(paintAudio);
}, 100);

function paintButtons() {
  sendButton.disabled = client.state !== "open";
  stopButton.disabled = client.streaming.length === 0;
}

/** @param {string} text */
function announce(text) {
  $("announcer").textContent = text;
}

/** @param {"user" | "system"} kind @param {string} text */
function addNote(kind, text) {
  const item = document.createElement("li");
  item.className = `msg ${kind}`;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = kind === "user" ? "You" : "Connection";
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  item.append(who, body);
  log.append(item);
  item.scrollIntoView({ block: "end" });
}

/** What the page shows of each reply, by request id. */
const replies = new Map();

/** @param {import("/static/agent-client.js").AgentResponse} response */
function addReply(response) {
  const item = document.createElement("li");
  item.className = "msg assistant";
  item.dataset.testid = "reply";
  item.dataset.status = "streaming";
  item.dataset.requestId = response.requestId;
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = response.agent ?? "agent";
  const text = document.createElement("p");
  text.className = "text";
  text.dataset.testid = "reply-text";
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.dataset.testid = "reply-meta";
  meta.textContent = "streaming…";
  item.append(who, text, meta);
  log.append(item);

  const view = { item, text, meta, ack: "" };
  const paintText = () => {
    text.textContent = response.text;
    item.scrollIntoView({ block: "end" });
  };
  replies.set(response.requestId, view);
  response.addEventListener("delta", () => schedule(paintText));
  response.done.then((done) => {
    // At once, not at the next frame: the reply stops exactly where it was cut.
    dirty.delete(paintText);
    paintText();
    item.dataset.status = done.status;
    meta.textContent = describe(done) + view.ack + heard(response);
    announce(`Reply ${done.status}`);
    paintButtons();
    schedule(paintFigures);
  });
  response.addEventListener("server-done", () => {
    meta.textContent = describe(/** @type {any} */ (response.result)) + view.ack + heard(response);
  });
  return view;
}

/** What the user heard of a spoken reply, by the server's DONE. @param {any} response */
function heard(response) {
  const done = response.serverDone ?? response.result;
  if (done?.heard_ms == null) return "";
  const text = (done.heard_text ?? "").trim();
  const words = text ? `: “${text}”` : ": nothing";
  return ` · heard ${(done.heard_ms / 1000).toFixed(2)} s of ${(done.audio_ms / 1000).toFixed(2)} s${words}`;
}

/** @param {import("/static/agent-client.js").DonePayload} done */
function describe(done) {
  const frames = `${done.frames} frame${done.frames === 1 ? "" : "s"}`;
  switch (done.status) {
    case "completed":
      return `completed · ${frames}`;
    case "interrupted":
      return `cut after ${frames}`;
    case "disconnected":
      return `connection lost after ${frames}`;
    case "shutdown":
      return `server shut down after ${frames}`;
    case "timeout":
      return `timed out after ${frames}`;
    case "failed":
      return `failed: ${done.error?.code ?? ""} ${done.error?.message ?? done.reason ?? ""}`;
    default:
      return `${done.status} · ${frames}`;
  }
}

/** Replies whose interrupt timed out, by the INTERRUPT's msg_id: a late ACK still shows. */
const awaitingLateAck = new Map();

/**
 * Barge in: interrupt every streaming reply, one INTERRUPT each (so each carries its
 * played_ms), silence whatever audio still plays, and show each ACK (or its absence).
 * @param {string} reason
 */
function interruptAll(reason) {
  const cut = client.streaming;
  const sounding = client.audio.pending > 0;
  for (const response of cut) interruptOne(response, reason);
  // Replies whose text has ended may still be speaking.
  client.audio.stop();
  if (sounding) {
    playedAfterMs = null;
    client.audio.measureAfterStop().then((ms) => {
      playedAfterMs = ms;
      schedule(paintAudio);
    });
  }
  schedule(paintFigures);
}

/** @param {import("/static/agent-client.js").AgentResponse} response @param {string} reason */
function interruptOne(response, reason) {
  const view = replies.get(response.requestId);
  const show = () => {
    view.meta.textContent = describe(/** @type {any} */ (response.result)) + view.ack + heard(response);
  };
  client.interrupt(response.requestId, reason).then(
    (ack) => {
      const confirmed = ack.interrupted.includes(response.requestId);
      view.ack = ack.resumed
        ? " · ACK recovered on resume"
        : ` · ACK in ${ack.ackMs.toFixed(1)} ms${confirmed ? "" : " (it had already finished)"}`;
      show();
      schedule(paintFigures);
    },
    (error) => {
      if (error instanceof AckTimeoutError) {
        view.ack = ` · no ACK within ${error.timeoutMs} ms`;
        show();
        awaitingLateAck.set(error.msgId, [response]);
        announce("The server did not acknowledge the interrupt in time");
      } else if (!(error instanceof NotConnectedError)) {
        throw error;
      }
      schedule(paintFigures);
    },
  );
}

// ------------------------------------------------------------------ actions

function send() {
  const input = promptBox.value.trim();
  if (!input || client.state !== "open") return;
  // Barge-in: the replies still streaming end here, before the new request goes out.
  interruptAll("USER_NEW_INPUT");
  addNote("user", input);
  const agent = agentSelect.value || undefined;
  // An emptied field means the page's default (the lorem agent's, in index.html).
  const speed = number(speedInput.value, Number(speedInput.defaultValue));
  const words = number(wordsInput.value, Number(wordsInput.defaultValue));
  /** @type {Record<string, unknown>} */
  const options =
    agent === "lorem"
      ? { words: Math.max(1, Math.round(words)), words_per_s: speed }
      : { words_per_s: speed };
  if (speakBox.checked && !speakBox.disabled) {
    options.voice = true;
    // Inside the user's gesture: browsers start an AudioContext only then.
    client.audio.context.resume();
  }
  addReply(client.request(input, { agent, options }));
  promptBox.value = "";
  paintButtons();
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});

promptBox.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});

stopButton.addEventListener("click", () => {
  interruptAll("USER_STOP");
  promptBox.focus();
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && client.streaming.length) {
    event.preventDefault();
    interruptAll("USER_STOP");
  }
});

speakBox.addEventListener("change", () => {
  if (speakBox.checked) client.audio.context.resume();
});

agentSelect.addEventListener("change", () => {
  const entry = client.session?.agents[agentSelect.value];
  $("agent-description").textContent = entry?.description ?? "";
});

// ------------------------------------------------------------------ the connection

/** Speech is offered only when the server has voices. @param {any} session */
function fillVoices(session) {
  const voices = session.voices ?? [];
  speakBox.disabled = voices.length === 0;
  $("speak-hint").textContent = voices.length
    ? `Voice ${session.default_voice ?? voices[0]} (${session.synthesizer ?? "server"}); audio stops the instant you barge in.`
    : "This server offers no voices.";
}

/** @param {import("/static/agent-client.js").SessionPayload} session */
function fillAgents(session) {
  const previous = agentSelect.value || query.get("agent") || session.default_agent || "";
  agentSelect.replaceChildren();
  for (const [name, entry] of Object.entries(session.agents)) {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = entry.available ? name : `${name} (unavailable)`;
    option.disabled = !entry.available;
    if (!entry.available && entry.unavailable_reason) option.title = entry.unavailable_reason;
    agentSelect.append(option);
  }
  const usable = [...agentSelect.options].filter((o) => !o.disabled).map((o) => o.value);
  agentSelect.value = usable.includes(previous) ? previous : (usable[0] ?? "");
  agentSelect.dispatchEvent(new Event("change"));
}

client.addEventListener("status", (event) => {
  const { state, reason, resuming } = /** @type {CustomEvent} */ (event).detail;
  const status = $("status");
  // A resume is told quietly in the header (below), not in the conversation.
  if (status.dataset.state === "open" && state === "reconnecting" && !resuming) {
    // The reason says who closed it and why, e.g. "closed by the server (code 1001:
    // server shutting down)": one pair of parentheses, the server's own words kept.
    addNote("system", `Connection lost: ${reason ?? "closed"}. Reconnecting…`);
  }
  status.textContent = state;
  status.dataset.state = state;
  paintButtons();
});

client.addEventListener("session", (event) => {
  const { session, sessionId, reconnected } = /** @type {CustomEvent} */ (event).detail;
  fillAgents(session);
  fillVoices(session);
  if (reconnected) addNote("system", `Reconnected: new session ${sessionId}.`);
  schedule(paintFigures);
});

let resumeFade = /** @type {any} */ (null);

/** The quiet resume word of the header. @param {string} state @param {string} text */
function showResume(state, text) {
  clearTimeout(resumeFade);
  const resume = $("resume");
  resume.dataset.state = state;
  resume.textContent = text;
  if (state !== "reconnecting") {
    // It fades in place (the log keeps a failure); its room stays reserved.
    resumeFade = setTimeout(
      () => {
        resume.dataset.state = "";
        resume.textContent = "";
      },
      state === "resumed" ? 4000 : 10000,
    );
  }
}

client.addEventListener("reconnecting", (event) => {
  const { attempt } = /** @type {CustomEvent} */ (event).detail;
  showResume("reconnecting", attempt > 1 ? `reconnecting… (${attempt})` : "reconnecting…");
});

client.addEventListener("resumed", () => {
  showResume("resumed", "resumed");
  schedule(paintFigures);
});

client.addEventListener("resume_failed", (event) => {
  const { code, reason } = /** @type {CustomEvent} */ (event).detail;
  showResume("failed", "resume failed");
  addNote("system", `Could not resume the session (${code ?? reason}); replies in progress were lost.`);
});

client.addEventListener("ack", (event) => {
  const { msgId, ackMs, late } = /** @type {CustomEvent} */ (event).detail;
  const cut = late ? awaitingLateAck.get(msgId) : undefined;
  if (!cut) return;
  awaitingLateAck.delete(msgId);
  for (const response of cut) {
    const view = replies.get(response.requestId);
    view.ack += `; it came late, after ${ackMs.toFixed(0)} ms`;
    view.meta.textContent = describe(response.result) + view.ack;
  }
});

for (const type of ["heartbeat", "ack", "ack-timeout", "dropped", "error", "audio"]) {
  client.addEventListener(type, () => schedule(paintFigures));
}

client.connect().catch((error) => {
  addNote("system", `Could not connect: ${error.message}`);
});
