"""Checkpointed sweeps: a sweep killed with SIGKILL and resumed returns bit for bit what an
uninterrupted sweep returns; a folder written by another configuration is refused with the
settings that differ; a damaged chunk file is set aside and recomputed; the main job
checkpoints per chunk of seeds."""

import functools
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import diffrax
import jax
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.nn import DeepLinear

WIDTHS = (3, 4, 4, 3)
# Three α × three chunks of two seeds. The α = 5e-4 flows take ~10⁴ steps per seed, so each of
# their chunks takes a few tenths of a second: long enough to kill a process inside one.
ALPHAS = (0.1, 0.01, 5e-4)
SEEDS = tuple(range(6))
CHUNK = 2
N_CHUNKS = len(ALPHAS) * len(SEEDS) // CHUNK
KW = dict(
    alphas=ALPHAS,
    seeds=SEEDS,
    chunk_size=CHUNK,
    batching="loop",
    n_save=8,
    rtol=1e-8,
    max_steps=50_000,
    solver=diffrax.Tsit5(),
    progress=False,
)


@functools.cache  # one function per widths, so that a second sweep reuses the compiled solve
def make_draw(widths):
    # A closure over the widths, as in the main job: same function, other networks.
    def draw(key):
        return DeepLinear(widths, key=key)

    return draw


def t1_of(alpha):
    return 3.0 / alpha  # the depth-3 plateau lasts ∝ 1/α


def make_problem():
    return sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)


def run_sweep(folder, **changes):
    """The sweep of this module into `folder` (also run, unchanged, by the killed scripts)."""
    kw = dict(KW, **changes)
    draw = make_draw(kw.pop("widths", WIDTHS))
    return sj.sweep(make_problem(), draw, t1_of, checkpoint=folder, **kw)


# Run in a fresh interpreter: the same sweep, imported from this module so that its functions
# (and so the fingerprint) are those of the test process.
SCRIPT = textwrap.dedent(
    """
    import sys

    import jax

    jax.config.update("jax_enable_x64", True)
    sys.path.insert(0, sys.argv[1])
    from test_checkpoint import run_sweep

    run_sweep(sys.argv[2])
    print("SWEEP FINISHED", flush=True)
    """
)


def assert_bitwise_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert x.tobytes() == y.tobytes()


def chunk_files(folder):
    return sorted(Path(folder).glob("*.eqx"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep, checkpointed into its own folder."""
    folder = tmp_path_factory.mktemp("reference")
    return folder, run_sweep(folder)


def _start_and_kill(script, folder, n_files):
    """Run the sweep in a subprocess and SIGKILL it as soon as `folder` holds `n_files` chunk
    files; return the number of files it left."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(Path(__file__).parent), str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(chunk_files(folder)) < n_files:
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the subprocess made no progress"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, out
    assert "SWEEP FINISHED" not in out
    left = len(chunk_files(folder))
    print(f"killed once {n_files} chunk files were written; {left} left")
    return left


def test_kill_and_resume_is_bitwise_identical(reference, tmp_path):
    """SIGKILL right after the first chunk file appears, then (in a second process resuming
    from it) while a chunk of the slowest α is being computed; the sweep resumed from what
    they left loads their chunks, solves the rest, and equals the uninterrupted sweep bit for
    bit (also across processes)."""
    _, expected = reference
    script = tmp_path / "run_sweep.py"
    script.write_text(SCRIPT)
    folder = tmp_path / "checkpoint"

    left = _start_and_kill(script, folder, 1)
    assert 1 <= left < N_CHUNKS
    # The second process resumes, finishes the α = 0.1 and 0.01 chunks and the first of
    # α = 5e-4, and is killed inside the next one.
    left = _start_and_kill(script, folder, N_CHUNKS - 2)
    assert N_CHUNKS - 2 <= left < N_CHUNKS

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="checkpoint file")  # nothing is damaged
        resumed = run_sweep(folder)
    assert resumed.stats["chunks_loaded"] == left
    assert len(chunk_files(folder)) == N_CHUNKS
    assert_bitwise_equal(resumed.solution, expected.solution)
    assert resumed.failures() == expected.failures() == []


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(rtol=1e-7), "options.rtol: 1e-08 → 1e-07"),
        (dict(widths=(3, 5, 5, 3)), "draw.first_draw.leaves"),
        (dict(alphas=(0.1, 0.01)), "alphas:"),
        (dict(solver=diffrax.Dopri5()), 'options.solver.repr: "Tsit5()" → "Dopri5()"'),
        (dict(chunk_size=3), "chunk_size: 2 → 3"),
    ],
)
def test_other_configuration_is_refused(reference, change, field):
    """A sweep with another rtol, width, α set, solver or chunk size into a folder written by
    the reference sweep raises before solving anything, naming the folder, the differing
    setting (stored → requested) and the fix, and leaves the folder as it was."""
    folder, _ = reference
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(ValueError) as error:
        run_sweep(folder, **change)
    message = str(error.value)
    assert str(folder) in message and field in message and "new folder" in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_same_configuration_resumes_without_solving(reference):
    """Run again with the same configuration, every chunk is loaded (none solved) and the
    result is the reference's bit for bit."""
    folder, expected = reference
    again = run_sweep(folder)
    assert again.stats["chunks_loaded"] == N_CHUNKS
    assert_bitwise_equal(again.solution, expected.solution)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_chunk_is_set_aside_and_recomputed(reference, tmp_path, damage):
    """A chunk file cut short or with one flipped byte is named in a warning, renamed to
    `<name>.corrupt` and its chunk recomputed; a leftover temporary file of a killed write is
    ignored; the result equals the uninterrupted sweep bit for bit."""
    source, expected = reference
    folder = tmp_path / "checkpoint"
    shutil.copytree(source, folder)
    victim = chunk_files(folder)[4]
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    else:
        i = len(data) // 3
        victim.write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :])
    (folder / (victim.name + ".123.tmp")).write_bytes(data[:100])

    with pytest.warns(RuntimeWarning, match=victim.name) as record:
        resumed = run_sweep(folder)
    assert len(record) == 1 and "corrupt" in str(record[0].message)
    assert (folder / (victim.name + ".corrupt")).exists()
    assert victim.read_bytes() == data  # recomputed and rewritten identically
    assert resumed.stats["chunks_loaded"] == N_CHUNKS - 1
    assert_bitwise_equal(resumed.solution, expected.solution)


def test_folder_without_fingerprint_is_refused(reference, tmp_path):
    """Chunk files without a readable fingerprint (sweep.json missing or of the old layout)
    cannot be checked, so the folder is refused."""
    source, _ = reference
    folder = tmp_path / "checkpoint"
    shutil.copytree(source, folder)
    (folder / "sweep.json").unlink()
    with pytest.raises(ValueError, match="no sweep.json"):
        run_sweep(folder)
    (folder / "sweep.json").write_text('{"alphas": [0.1], "seeds": [0], "chunk": 2}')
    with pytest.raises(ValueError, match="another version"):
        run_sweep(folder)


def test_failure_summary_counts_per_message():
    """failure_summary() counts the failed trajectories per RESULTS message, most frequent
    first, and names their (α, seed)."""
    R = sj.RESULTS
    which = np.array([[0, 1, 0], [2, 0, 1]])  # α × seed: 1 max steps, 2 non-finite

    def code(k):
        result = R.where(k == 1, R.max_steps_reached, R.successful)
        return R.where(k == 2, R.nonfinite_trajectory, result)

    result = jax.vmap(jax.vmap(code))(jax.numpy.asarray(which))
    sweep_result = sj.SweepResult(
        np.array([0.1, 0.01]), np.array([0, 1, 2]), SimpleNamespace(result=result), {}
    )
    lines = sweep_result.failure_summary().splitlines()
    assert lines[0] == "3 of 6 trajectories failed:"
    assert lines[1].startswith(f"  2 × {R[R.max_steps_reached]}")
    assert "(α = 0.1, seed 1), (α = 0.01, seed 2)" in lines[1]
    assert lines[2] == f"  1 × {R[R.nonfinite_trajectory]} — (α = 0.01, seed 0)"
    assert len(lines) == 3


def test_main_job_checkpoints_per_chunk(monkeypatch):
    """The main job passes one seed per host device as the chunk (the unit of checkpointing)
    on CPUs, so a run killed mid-α loses at most one chunk, and checkpoints into the run's
    checkpoint folder."""
    from saddlejax.experiments import MatrixCompletionConfig, RunContext, run_matrix_completion

    seen = {}

    class Stop(Exception):
        pass

    def fake_sweep(*args, **kwargs):
        seen.update(kwargs)
        raise Stop  # before any work

    monkeypatch.setattr(sj, "sweep", fake_sweep)
    with pytest.raises(Stop):
        run_matrix_completion(
            MatrixCompletionConfig(seeds=tuple(range(8))), RunContext(False, "x")
        )
    assert seen["chunk_size"] == len(jax.devices()) < 8
    assert str(seen["checkpoint"]) == str(Path("x") / "sweep")
