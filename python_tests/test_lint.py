"""ruff, with the configuration in pyproject.toml, passes on the package, the tests and the benchmarks."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes():  # ruff is a test dependency: missing, this fails rather than skips
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "fastot", "python_tests", "bench"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
