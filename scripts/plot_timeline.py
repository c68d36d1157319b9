#!/usr/bin/env python3
"""Draw one INTERRUPT of a trio-agent trace as a timeline, and tell it as text.

    scripts/plot_timeline.py TRACE --out timeline.png [--request ID | --interrupt MSG_ID]

TRACE is a JSON-lines file written by `trio-agent serve --trace PATH` or
`trio-agent demo`. Without --request or --interrupt, the first INTERRUPT that cut
a request is drawn. The story is always printed; the PNG needs matplotlib
(`pip install 'trio-agent[demo]'`). --list shows every INTERRUPT in the trace.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trio_agent.observability.timeline import interrupt_stories, load_trace, narrate, pick_story
from trio_agent.observability.timeline_plot import PlotUnavailable, draw_timeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace", type=Path, help="a JSON-lines trace file")
    parser.add_argument("--out", type=Path, help="where to write the PNG (text only without it)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--request", metavar="ID", help="the INTERRUPT that cut this request")
    which.add_argument("--interrupt", metavar="MSG_ID", help="the INTERRUPT with this msg_id")
    parser.add_argument("--list", action="store_true", help="list the INTERRUPTs and exit")
    args = parser.parse_args(argv)

    try:
        events = load_trace(args.trace)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if args.list:
        for story in interrupt_stories(events):
            cut = ", ".join(story.cut) or "nothing"
            print(f"{story.msg_id:<10} session {story.session}  cut: {cut}")
        return 0
    try:
        story = pick_story(events, request_id=args.request, msg_id=args.interrupt)
    except LookupError as exc:
        print(f"plot_timeline: {exc}", file=sys.stderr)
        return 1
    print(narrate(story))
    if args.out is not None:
        try:
            draw_timeline(story, args.out)
        except PlotUnavailable as exc:
            print(f"plot_timeline: {exc}", file=sys.stderr)
            return 1
        print(f"\npicture: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
