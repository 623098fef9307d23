"""The main job runs end to end (tiny sizes) and agrees with the reference."""

import io
import subprocess
import sys

from fastot import cli


def test_tour_small_agrees_with_reference():
    buf = io.StringIO()
    rows = cli.tour(small=True, repeats=1, file=buf)
    ops = {(r["backend"], r["op"].split()[0]) for r in rows}
    assert ("torch", "sinkhorn") in ops and ("torch", "codeswitch") in ops
    for r in rows:
        limit = 0 if r["op"].startswith("codeswitch") else 1e-4
        assert r["max_abs_diff"] <= limit, r
    assert "max abs diff" in buf.getvalue()


def test_module_entry_point():
    res = subprocess.run([sys.executable, "-m", "fastot", "backends"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "sinkhorn" in res.stdout
