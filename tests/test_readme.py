"""The README's client example runs as written (against a test server)."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).parent.parent / "README.md").read_text()


async def test_readme_client_example_runs(start_server, capsys):
    code = re.search(r"```python\n(.*?)```", README, flags=re.S)
    assert code is not None
    source = code.group(1)
    assert "trio.run(main)" in source
    server = await start_server()
    namespace: dict = {}
    exec(
        source.replace("trio.run(main)", "").replace("ws://127.0.0.1:8765/ws", server.url),
        namespace,
    )
    await namespace["main"]()
    out = capsys.readouterr().out
    assert out.startswith("lorem ipsum dolor sit amet consectetur adipiscing elit sed do\n")
    assert "interrupted; server cut ('req-1',) in" in out
