"""`import saddlejax` stays light: the heavy optional modules load where they are used."""

import subprocess
import sys

# Each of these took 0.4–1.3 s of every process's start (CLI runs, notebook kernels, workers).
DEFERRED = ("scipy.signal", "scipy.optimize", "scipy.interpolate", "jax.experimental.sparse")


def test_import_defers_heavy_modules():
    code = f"import sys, saddlejax; print(' '.join(m for m in {DEFERRED!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"imported by `import saddlejax`: {out.stdout.strip()}"
