"""The README's tour runs as written and prints what it says it prints."""

import contextlib
import io
import re

from .conftest import ROOT


def _tour_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A tour", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", tour, flags=re.S)


def test_the_tour_runs_and_prints_the_chapters_numbers():
    blocks = _tour_blocks()
    assert len(blocks) == 2
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    lines = out.getvalue().splitlines()
    assert lines[0] == "epoch 20, x1 -2.382563, x2 -0.158591"
    assert lines[1] == "epoch 20, x1 -0.002295, x2 -0.000000"
    losses = [float(v) for v in lines[2].split()]
    assert len(losses) == 3 and all(0.235 <= v <= 0.250 for v in losses)
