import os
import random
import shutil
import tempfile

# The suite runs in several processes (pytest-xdist); on a GPU each would otherwise reserve
# most of its memory at start.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# The suite compiles more than it runs (about half its time is XLA:CPU compilation, most of it
# LLVM's optimisation passes): LLVM's -O1 instead of -O2 cuts the suite's time by a seventh. Results
# differ from -O2's in the last bits only; the processes the tests start inherit the flag, so
# every bit-for-bit comparison is between programs compiled alike.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=1"]
).strip()
# One run of the suite starts from an empty compilation cache, as on a new machine, and its
# processes (the pytest-xdist workers, which inherit this variable from the controller, and the
# CLI processes the tests start) share it: a solve compiled by one module is loaded, not
# compiled again, by the next. The user's cache folder is never touched.
_OWN_CACHE = "SADDLEJAX_TEST_CACHE" not in os.environ
if _OWN_CACHE:
    os.environ["SADDLEJAX_TEST_CACHE"] = tempfile.mkdtemp(prefix="saddlejax-test-xla-")
os.environ.setdefault("SADDLEJAX_CACHE_DIR", os.environ["SADDLEJAX_TEST_CACHE"])

import jax  # noqa: E402
import jax.random as jr  # noqa: E402
import pytest  # noqa: E402

from saddlejax.cli import use_compilation_cache  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")
use_compilation_cache()


def pytest_collection_modifyitems(items):
    """The notebooks first: they are the longest tests (up to a few minutes each), and a
    process that starts one at the end of the run leaves the other idle (pytest-xdist's
    workers steal short tests from each other's queues, not a running notebook)."""
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_notebooks.py"))


def pytest_unconfigure(config):
    """The controller removes the run's compilation cache when the run ends."""
    if _OWN_CACHE and not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ["SADDLEJAX_TEST_CACHE"], ignore_errors=True)


@pytest.fixture
def getkey():
    """A function returning fresh PRNG keys; prints the seed so a failure can be reproduced."""
    seed = random.randint(0, 2**31 - 1)
    print(f"getkey seed: {seed}")
    keys = iter(jr.split(jr.key(seed), 10_000))
    return lambda: next(keys)


def _memory_maps() -> tuple[int, int] | None:
    """(this process's memory mappings, the kernel's per-process limit), where Linux says."""
    try:
        with open("/proc/self/maps") as maps, open("/proc/sys/vm/max_map_count") as limit:
            return sum(1 for _ in maps), int(limit.read())
    except (OSError, ValueError):
        return None


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after a test module once this process holds more than
    0.45 × the kernel's per-process limit on memory mappings (vm.max_map_count, 65,530 here);
    where that count is unknown, after every module. Each XLA:CPU executable holds mappings:
    kept for the whole suite they reached the limit late in the run (a segmentation fault
    inside XLA's compiler), and one module adds fewer than 13,500. Kept below the threshold,
    a later module that runs the same solve reuses it instead of tracing, lowering and loading
    it again from the compilation cache."""
    yield
    maps = _memory_maps()
    if maps is None or maps[0] > 0.45 * maps[1]:
        jax.clear_caches()
