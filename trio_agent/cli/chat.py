"""``trio-agent chat``: a terminal chat that barges in.

Each line typed is a request; a new line while a reply streams interrupts it and
asks at once, never waiting for the ACK. This module holds the chat loop, its
flags and its entry point; the terminal I/O is in :mod:`trio_agent.cli.chat_terminal`
and the speech in :mod:`trio_agent.cli.chat_voice`. docs/client.md ("The terminal
chat") describes it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TextIO

import trio

from trio_agent.cli.chat_terminal import LineReader, Screen, ThreadedFdReader
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
HELP = (
    "type a line to ask; a new line while a reply streams interrupts it. "
    "/stop interrupts, /agent NAME switches agent, /quit leaves"
)


class Chat:
    """The chat's state: the agent in use and the reply on screen."""

    def __init__(
        self,
        client: AgentClient,
        screen: Screen,
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
        else:
            self.screen.note(HELP)
        return True

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
        names = ", ".join(self.client.agents)
        if not name:
            self.screen.note(f"agent: {self.agent} (agents: {names})")
        elif name in self.client.agents and self.client.agents[name].available:
            self.agent = name
            self.screen.note(f"agent: {name}")
        else:
            self.screen.note(f"no agent {name!r} here (agents: {names})")

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


async def show_connection(client: AgentClient, screen: Screen) -> None:
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
    stdin: trio.abc.ReceiveStream,
    out: TextIO,
    agent: str | None = None,
    token: str | None = None,
    echo_input: bool = False,
    heartbeat_s: float | None = 10.0,
    voice: VoiceSettings | None = None,
    stream: trio.abc.Stream | None = None,
    open_stream: Callable[[], Awaitable[trio.abc.Stream]] | None = None,
) -> int:
    """Run the chat until ``/quit`` or the end of ``stdin``; return the exit status.

    :param echo_input: print each input line (``> line``): useful when the input
        is a pipe, so the transcript shows the questions.
    :param voice: speak the replies (see :class:`VoiceSettings`).
    :param stream: connect over this open stream (see :func:`open_agent_client`).
    :param open_stream: open the stream of each later connection (a resume), see
        :func:`open_agent_client`.

    When the connection drops and the session is resumed, one line says so
    (``[reconnecting...]``, then ``[resumed]``) and the reply goes on.

    Errors (cannot connect, connection lost) are printed as one line on stderr,
    with exit status 1; an unknown ``agent`` gives status 2.

    Cancellation: the chat lives in one nursery. A task per reply shows it; a task
    per spoken reply feeds its sinks, inside a cancel scope the next barge-in
    cancels (its ``finally`` kills and reaps the player, shielded and bounded); a
    task per interrupt waits for its ACK and reports it. Leaving (``/quit``,
    Ctrl-C) cancels them all, and the client's block closes the connection.
    """
    screen = Screen(out)
    try:
        async with open_agent_client(
            url, token=token, heartbeat_s=heartbeat_s, stream=stream, open_stream=open_stream
        ) as client:
            names = ", ".join(client.agents)
            chosen = agent or client.default_agent or next(iter(client.agents), None)
            if chosen is None or chosen not in client.agents:
                print(
                    f"trio-agent chat: no agent {chosen!r} here (agents: {names})", file=sys.stderr
                )
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
            screen.note(f"connected to {url}, session {client.session_id}; agent {chosen}")
            if voice is not None:
                screen.note(describe_voice(client, voice))
                if not client.voices:
                    voice = None  # asking would only get UNKNOWN_VOICE
            screen.note(HELP)
            lines = LineReader(stdin)
            async with trio.open_nursery() as watching:
                watching.start_soon(show_connection, client, screen)
                async with trio.open_nursery() as nursery:
                    chat = Chat(client, screen, chosen, nursery, echo_input=echo_input, voice=voice)
                    while (line := await lines.next_line()) is not None:
                        if not await chat.handle(line):
                            nursery.cancel_scope.cancel(reason="/quit")
                            break
                # At the end of the input the nursery has waited for the last reply.
                watching.cancel_scope.cancel(reason="the chat is over")
    except AgentClientError as error:
        screen.end_reply()
        print(f"trio-agent chat: {error}", file=sys.stderr)
        return 1
    return 0


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


def chat_main(args: argparse.Namespace) -> int:
    """``trio-agent chat``: run the chat on stdin and stdout."""
    return trio.run(_chat_until_ctrl_c, args)


async def _chat_until_ctrl_c(args: argparse.Namespace) -> int:
    """Run the chat; Ctrl-C (SIGINT) cancels it, which closes the connection cleanly
    and exits with status 0 instead of a KeyboardInterrupt traceback."""
    status = 0
    interrupted = False
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
                stdin=ThreadedFdReader(sys.stdin.fileno()),
                out=sys.stdout,
                agent=args.agent,
                token=args.token,
                echo_input=not sys.stdin.isatty(),
                voice=voice_settings(args),
            )
            nursery.cancel_scope.cancel(reason="chat over")
    if interrupted:
        print(file=sys.stdout)  # leave the shell prompt on a line of its own
    return status
