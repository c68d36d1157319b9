"""``trio-agent chat``: a terminal chat that barges in.

Each line typed is a request; a new line while a reply streams interrupts it and
asks at once, never waiting for the ACK. This module holds the chat loop, its
flags and its entry point; a terminal's prompt is :mod:`trio_agent.cli.chat_prompt`,
a pipe's plain input and output :mod:`trio_agent.cli.chat_terminal`, the help and
the agents' availability :mod:`trio_agent.cli.chat_help`, and the speech
:mod:`trio_agent.cli.chat_voice`. docs/client.md ("The terminal chat") describes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import NoReturn, TextIO

import trio

from trio_agent.cli.chat_help import COMMANDS, HELP, agent_problem, choose_agent, describe_agents
from trio_agent.cli.chat_terminal import (
    ChatInput,
    ChatScreen,
    Key,
    LineReader,
    Screen,
    TerminalFailed,
    ThreadedFdReader,
)
from trio_agent.cli.chat_voice import (
    DEFAULT_WAV,
    Speech,
    VoiceSettings,
    describe_heard,
    describe_voice,
    voice_settings,
)
from trio_agent.client import (
    AckInfo,
    AckTimeout,
    AgentClient,
    AgentClientError,
    ClientClosed,
    DoneInfo,
    InterruptHandle,
    PlayerSink,
    Response,
    ServerError,
    WavFileSink,
    check_token,
    open_agent_client,
)
from trio_agent.protocol.constants import DEFAULT_URL

STOP_REASON = "USER_STOP"
NEW_INPUT_REASON = "USER_NEW_INPUT"


class Chat:
    """The chat's state: the agent in use and the reply on screen."""

    def __init__(
        self,
        client: AgentClient,
        screen: ChatScreen,
        agent: str,
        nursery: trio.Nursery,
        *,
        echo_input: bool = False,
        voice: VoiceSettings | None = None,
    ) -> None:
        self.client = client
        self.screen = screen
        self.agent = agent
        self.echo_input = echo_input
        self.voice = voice
        self._voice_settings = voice
        self._nursery = nursery
        self._current: Response | None = None
        self._speech: Speech | None = None
        #: Set when the reply on screen has been shown to its end.
        self._shown = trio.Event()
        self._shown.set()

    async def handle(self, line: str) -> bool:
        """Act on one input line; return ``False`` to leave.

        A question or ``/stop`` first cuts the reply on screen, so the echoed line
        (``echo_input``) comes right after the ``[cut ...]`` marker.
        """
        text = line.strip()
        if not text:
            return True
        command, _, argument = text.partition(" ")
        if not text.startswith("/"):
            await self.stop(NEW_INPUT_REASON)
            self._echo(line)
            await self.ask(text)
            return True
        if command == "/stop":
            stopped = await self.stop(STOP_REASON)
            self._echo(line)
            if not stopped:
                self.screen.note("nothing to stop")
            return True
        self._echo(line)
        if command == "/quit":
            return False
        if command == "/agent":
            self.switch_agent(argument.strip())
        elif command == "/voice":
            self.switch_voice(argument.strip())
        elif command == "/help":
            for usage in COMMANDS:
                self.screen.line(usage)
        else:
            self.screen.note(f"unknown command {command}: /help lists the commands")
        return True

    async def handle_key(self, key: Key) -> bool:
        """Act on a key that is not a line; return ``False`` to leave. Esc stops the
        reply quietly (nothing to stop is no news); Ctrl-C leaves."""
        if key is Key.STOP:
            await self.stop(STOP_REASON)
            return True
        return False

    async def ask(self, text: str) -> None:
        """Ask ``text`` at once. Call :meth:`stop` first: a new request never waits
        for the ACK of the interrupt before it."""
        voice = self.voice
        try:
            response = await self.client.request(
                text,
                agent=self.agent,
                voice=voice.voice if voice is not None else None,
                audio_pace=voice.audio_pace if voice is not None else None,
            )
        except ValueError as exc:
            self.screen.note(f"not sent: {exc}")
            return
        self._current = response
        self._shown = trio.Event()
        self._nursery.start_soon(self._show, response, self._shown)
        if voice is not None:
            speech = self._speech = Speech(voice.sinks(response.request_id))
            players = speech.players()
            if players:
                response.use_playback_clock(players[0].played_ms)
            self._nursery.start_soon(self._speak, response, speech)

    async def stop(self, reason: str) -> bool:
        """Interrupt the reply on screen, and silence its audio; return ``False`` if
        nothing was running or playing. (A reply that has ended may still be playing:
        it is silenced, with no INTERRUPT, since the server is done with it.)

        Returns once the INTERRUPT is sent and the cut reply has been closed on the
        screen (both immediate: the cut is local); the ACK is reported later by its
        own task.
        """
        current = self._current
        speech, self._speech = self._speech, None
        if current is None or current.ended:
            if speech is None:
                return False
            # Its text is over, but it may still be playing: silence it all the same.
            playing = speech.playing
            speech.silence()
            return playing
        # The position is read before the players stop, then the sound stops, then
        # the INTERRUPT goes: silence does not wait for the socket.
        played_ms = current.played_ms if current.spoken else None
        if speech is not None:
            speech.silence()
        handle = await self.client.interrupt(current.request_id, reason=reason, played_ms=played_ms)
        await self._shown.wait()
        self._nursery.start_soon(self._report_ack, handle, current)
        return True

    def _echo(self, line: str) -> None:
        if self.echo_input:
            self.screen.line(f"> {line}")

    def switch_agent(self, name: str) -> None:
        """``/agent``: list the agents (and why one is unavailable), or use ``name``."""
        if not name:
            self.screen.note(f"agent: {self.agent} ({describe_agents(self.client.agents)})")
        elif (problem := agent_problem(self.client.agents, name)) is not None:
            self.screen.note(problem)
        else:
            self.agent = name
            self.screen.note(f"agent: {name}")

    def switch_voice(self, setting: str) -> None:
        """``/voice``: say how replies are spoken; ``/voice off`` stops speaking them,
        ``/voice on`` speaks them again (as the flags say, else to WAV files)."""
        if setting == "off":
            self.voice = None
        elif setting == "on":
            if not self.client.voices:
                self.screen.note("the server offers no voices: replies will not be spoken")
                return
            self.voice = self._voice_settings or VoiceSettings(wav=DEFAULT_WAV)
        elif setting:
            self.screen.note(f"/voice takes on or off, not {setting!r}")
            return
        if self.voice is None:
            self.screen.note("replies are not spoken (/voice on speaks them)")
        else:
            self.screen.note(describe_voice(self.client, self.voice))

    async def _show(self, response: Response, shown: trio.Event) -> None:
        """Print the reply as it streams, and how it ended at the end of its line.

        The end is printed in ``finally`` from the response's state, so it shows even
        when the chat is being cancelled (the server closed right after the DONE).
        """
        chunks = 0
        try:
            async for chunk in response:
                self.screen.reply(chunk.delta)
                chunks += 1
        except ServerError as error:
            self.screen.note(f"refused: {error.code}: {error.message}")
        except ClientClosed:
            pass
        finally:
            shown.set()
            self.screen.end_reply(end_marker(response.done_info, chunks))

    async def _speak(self, response: Response, speech: Speech) -> None:
        """Feed the reply's audio to its sinks until the reply ends; then let a
        player play to its end. A barge-in cancels ``speech.scope``; whatever ends
        this task, the ``finally`` stops the sinks (bounded, shielded), so no
        player outlives it."""
        try:
            with speech.scope:
                async for chunk in response.audio():
                    for sink in speech.sinks:
                        await sink.write(chunk)
                if not response.interrupted_locally:
                    for sink in speech.sinks:
                        await sink.finish()
        except (ServerError, ClientClosed):
            pass
        finally:
            for sink in speech.sinks:
                await sink.abort()
            for sink in speech.sinks:
                if isinstance(sink, WavFileSink) and sink.written_ms:
                    self.screen.note(f"wrote {sink.path} ({sink.written_ms / 1000:.2f} s)")
                elif isinstance(sink, PlayerSink) and sink.failure is not None:
                    self.screen.note(
                        f"the player `{sink.command}` exited with status {sink.failure}"
                    )

    async def _report_ack(self, handle: InterruptHandle, response: Response) -> None:
        try:
            ack = await handle.acknowledged()
        except AckTimeout as timeout:
            self.screen.note(f"no ACK within {timeout.timeout:g} s; the reply stays cut here")
        except ServerError as error:
            self.screen.note(f"interrupt refused: {error.code}: {error.message}")
        except ClientClosed:
            pass
        else:
            self.screen.note(describe_ack(ack, handle))
            if response.spoken:
                try:
                    done = await response.wait_server_done()
                except (ServerError, ClientClosed):
                    return
                if (heard := describe_heard(done)) is not None:
                    self.screen.note(heard)


def end_marker(done: DoneInfo | None, chunks_shown: int) -> str:
    """What follows a reply on its line: nothing when it completed (or has not
    ended), ``[cut after N chunks]`` when this client interrupted it, else its status."""
    if done is None or done.status == "completed":
        return ""
    if done.local:
        return f"[cut after {chunks_shown} chunk{'' if chunks_shown == 1 else 's'}]"
    return f"[{done.status}: {done.reason}]" if done.reason else f"[{done.status}]"


def describe_ack(ack: AckInfo, handle: InterruptHandle) -> str:
    """One line about an INTERRUPT_ACK, e.g. ``ack in 0.4 ms: the server cut req-1``."""
    head = f"ack in {ack.rtt_s * 1000:.1f} ms"
    if ack.interrupted:
        what = f"the server cut {', '.join(ack.interrupted)}"
    elif handle.request_id is not None and handle.request_id in ack.targets:
        outcome = ack.targets[handle.request_id]
        what = (
            f"{handle.request_id} had already finished on the server"
            if outcome == "already_done"
            else f"the server did not know {handle.request_id}"
        )
    else:
        what = "nothing was running on the server"
    late = ack.stale_dropped
    dropped = f"; {late} late chunk{'' if late == 1 else 's'} dropped" if late else ""
    return f"{head}: {what}{dropped}"


async def show_connection(client: AgentClient, screen: ChatScreen) -> None:
    """One discreet line when the connection drops (``[reconnecting...]``, once
    per drop), when the session is back (``[resumed]``), or when it cannot be
    (``[could not resume: ...]``). Runs until cancelled or the client ends."""
    async for event in client.events:
        if event.kind == "reconnecting" and event.attempt == 1:
            screen.note("reconnecting...")
        elif event.kind == "resumed":
            screen.note("resumed")
        elif event.kind == "resume_failed":
            screen.note(f"could not resume: {event.error}")


async def run_chat(
    url: str,
    *,
    stdin: trio.abc.ReceiveStream | None = None,
    out: TextIO | None = None,
    terminal: bool = False,
    agent: str | None = None,
    token: str | None = None,
    echo_input: bool = False,
    heartbeat_s: float | None = 10.0,
    voice: VoiceSettings | None = None,
    stream: trio.abc.Stream | None = None,
    open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
) -> int:
    """Run the chat until ``/quit`` or the end of ``stdin``; return the exit status.

    :param stdin: the input, read line by line (a pipe, a file).
    :param out: where the transcript goes (default: ``sys.stdout``).
    :param terminal: read the terminal with a prompt at the bottom instead
        (:mod:`trio_agent.cli.chat_prompt`; ``stdin`` and ``out`` are not used). The
        prompt opens once the session is open and the agent checked, and is gone,
        the terminal restored, before any error is printed.
    :param echo_input: print each input line (``> line``): useful when the input
        is a pipe, so the transcript shows the questions.
    :param voice: speak the replies (see :class:`VoiceSettings`).
    :param stream: connect over this open stream (see :func:`open_agent_client`).
    :param open_stream: open the stream of each later connection (a resume), see
        :func:`open_agent_client`.

    When the connection drops and the session is resumed, one line says so
    (``[reconnecting...]``, then ``[resumed]``) and the reply goes on.

    Errors (cannot connect, connection lost) are printed as one line on stderr,
    with exit status 1; an agent the server does not have or cannot run (with
    the reason), or a voice it does not have, gives status 2.

    Cancellation: the chat lives in one nursery. A task per reply shows it; a task
    per spoken reply feeds its sinks, inside a cancel scope the next barge-in
    cancels (its ``finally`` kills and reaps the player, shielded and bounded); a
    task per interrupt waits for its ACK and reports it. Leaving (``/quit``,
    Ctrl-C) cancels them all, the prompt's thread is stopped (bounded), and the
    client's block closes the connection (bounded).
    """
    plain = Screen(out if out is not None else sys.stdout)
    try:
        async with open_agent_client(
            url, token=token, heartbeat_s=heartbeat_s, stream=stream, open_stream=open_stream
        ) as client:
            chosen, problem = choose_agent(client.agents, agent, client.default_agent)
            if chosen is None:
                print(f"trio-agent chat: {problem}", file=sys.stderr)
                return 2
            if (
                voice is not None
                and isinstance(voice.voice, str)
                and voice.voice not in client.voices
            ):
                voices = ", ".join(client.voices) or "none"
                print(
                    f"trio-agent chat: no voice {voice.voice!r} here (voices: {voices})",
                    file=sys.stderr,
                )
                return 2
            async with _open_input(terminal, stdin, plain) as (screen, lines):
                await _converse(client, url, chosen, screen, lines, echo_input, voice)
    except (AgentClientError, TerminalFailed) as error:
        plain.end_reply()
        print(f"trio-agent chat: {error}", file=sys.stderr)
        return 1
    return 0


@asynccontextmanager
async def _open_input(
    terminal: bool, stdin: trio.abc.ReceiveStream | None, plain: Screen
) -> AsyncIterator[tuple[ChatScreen, ChatInput]]:
    """The chat's screen and input: the prompt on a terminal, else ``stdin`` read
    line by line and ``plain``. (prompt_toolkit is imported only for a terminal.)"""
    if terminal:
        from trio_agent.cli.chat_prompt import open_terminal_prompt

        async with open_terminal_prompt() as prompt:
            yield prompt, prompt
        if prompt.failure is not None:
            raise TerminalFailed(f"the terminal's prompt failed: {prompt.failure!r}")
        return
    if stdin is None:
        raise ValueError("run_chat needs stdin, or terminal=True")
    yield plain, LineReader(stdin)


async def _converse(
    client: AgentClient,
    url: str,
    agent: str,
    screen: ChatScreen,
    lines: ChatInput,
    echo_input: bool,
    voice: VoiceSettings | None,
) -> None:
    """Read and act until ``/quit``, a quitting key, or the end of the input (which
    waits for the last reply)."""
    screen.note(f"connected to {url}, session {client.session_id}; agent {agent}")
    if voice is not None:
        screen.note(describe_voice(client, voice))
        if not client.voices:
            voice = None  # asking would only get UNKNOWN_VOICE
    screen.note(HELP)
    async with trio.open_nursery() as watching:
        watching.start_soon(show_connection, client, screen)
        async with trio.open_nursery() as nursery:
            chat = Chat(client, screen, agent, nursery, echo_input=echo_input, voice=voice)
            while (line := await lines.next_line()) is not None:
                going_on = (
                    await chat.handle_key(line)
                    if isinstance(line, Key)
                    else await chat.handle(line)
                )
                if not going_on:
                    nursery.cancel_scope.cancel(reason="the user left")
                    break
        # At the end of the input the nursery has waited for the last reply.
        watching.cancel_scope.cancel(reason="the chat is over")


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", nargs="?", default=DEFAULT_URL, help=f"server WebSocket URL (default {DEFAULT_URL})"
    )
    parser.add_argument("--agent", help="agent to ask (default: the server's default agent)")
    parser.add_argument(
        "--token",
        type=_token_argument,
        default=os.environ.get("TRIO_AGENT_TOKEN"),
        help="access token (default: $TRIO_AGENT_TOKEN)",
    )
    voice = parser.add_argument_group(
        "voice", "Speak the replies (protocol v1.1). A new line stops the sound at once."
    )
    voice.add_argument(
        "--voice",
        nargs="?",
        const=True,
        metavar="NAME",
        help="ask for spoken replies, in voice NAME (default: the server's default voice)",
    )
    voice.add_argument(
        "--wav",
        metavar="PATH",
        help="write each reply's audio to PATH, a WAV file; {request_id} in PATH is "
        f"replaced by the reply's id (--voice alone: {DEFAULT_WAV})",
    )
    voice.add_argument(
        "--play",
        metavar="COMMAND",
        help="play each reply through COMMAND, which reads a WAV stream on stdin "
        "(e.g. aplay); a COMMAND naming {rate} or {channels} gets raw pcm_s16le "
        "instead (e.g. 'aplay -t raw -f S16_LE -r {rate} -c {channels}')",
    )
    voice.add_argument(
        "--audio-pace",
        type=float,
        metavar="X",
        help="how fast the server sends audio: 1 = real time, 0 = as fast as it can",
    )


def _token_argument(value: str) -> str:
    try:
        return check_token(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def chat_main(args: argparse.Namespace) -> NoReturn:
    """``trio-agent chat``: run the chat on stdin and stdout, then end the process.

    It ends with :func:`os._exit`, skipping the interpreter's teardown: freeing
    what the imports made (pydantic's models, httpx, prompt_toolkit) takes 0.1 to
    0.8 s on a loaded machine, and Ctrl-C must leave at once. Nothing is lost by
    it: by then the chat has closed everything it opened (the connection with its
    close frame, the terminal, the players, the WAV files), and the standard
    streams are flushed here.
    """
    status = trio.run(_chat_until_ctrl_c, args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


async def _chat_until_ctrl_c(args: argparse.Namespace) -> int:
    """Run the chat; Ctrl-C (SIGINT) cancels it, which closes the connection cleanly
    and exits with status 0 instead of a KeyboardInterrupt traceback.

    On a terminal (stdin and stdout both) the prompt reads Ctrl-C as a key, and the
    chat leaves the same way; SIGINT still arrives from ``kill -INT``, or between
    two prompts.
    """
    status = 0
    interrupted = False
    on_terminal = sys.stdin.isatty() and sys.stdout.isatty()
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def leave_on_ctrl_c() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel(reason="Ctrl-C")
                    return

            nursery.start_soon(leave_on_ctrl_c)
            status = await run_chat(
                args.url,
                stdin=None if on_terminal else ThreadedFdReader(sys.stdin.fileno()),
                terminal=on_terminal,
                agent=args.agent,
                token=args.token,
                # The prompt erases the accepted line, and the chat prints it back
                # after the cut reply; a plain terminal (stdout piped) echoes itself.
                echo_input=on_terminal or not sys.stdin.isatty(),
                voice=voice_settings(args),
            )
            nursery.cancel_scope.cancel(reason="chat over")
    if interrupted and not on_terminal:
        print(file=sys.stdout)  # leave the shell prompt on a line of its own
    return status
