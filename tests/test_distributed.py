"""sweep under `jax.distributed`: two local CPU processes split the chunks between them, and each
returns the sweep of a single process, bit for bit, with and without a shared checkpoint folder."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import diffrax
import jax
import jax.random as jr
import numpy as np
import pytest

import saddlejax as sj
from saddlejax.flow._distributed import initialize_from_env
from saddlejax.nn import DeepLinear

ALPHAS = (0.1, 0.05)
SEEDS = tuple(range(5))  # chunks of 2, 2 and 1 seeds: the last one is short
CHUNK = 2
N_PROCESSES = 2
KW = dict(
    alphas=ALPHAS,
    seeds=SEEDS,
    chunk_size=CHUNK,
    batching="loop",
    n_save=8,
    rtol=1e-8,
    solver=diffrax.Tsit5(),
    progress=False,
)


def draw(key):
    return DeepLinear((3, 4, 4, 3), key=key)


def t1_of(alpha):
    return 3.0 / alpha  # the depth-3 plateau lasts ∝ 1/α


def run_sweep(**kw):
    """The sweep of this module (also run, unchanged, by each process of the distributed run)."""
    problem = sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)
    return sj.sweep(problem, draw, t1_of, **KW, **kw)


# One process of the distributed run: three sweeps (no checkpoint; a shared checkpoint folder;
# the same folder again, which every process resumes from), each saved to out/<name>.npz with
# the chunks that `on_chunk` reported in this process.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import jax
    import numpy as np

    from saddlejax.flow._distributed import initialize_from_env

    tests, index, out = sys.argv[1:]
    jax.config.update("jax_num_cpu_devices", 2)  # two local devices each, four in all
    assert initialize_from_env()  # jax.distributed.initialize from SADDLEJAX_* (as the CLI)
    sys.path.insert(0, tests)
    from test_distributed import run_sweep

    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    out = Path(out)
    for name, folder in [("plain", None), ("saved", out / "checkpoint"),
                         ("resumed", out / "checkpoint")]:
        chunks = []
        result = run_sweep(checkpoint=folder, on_chunk=chunks.append)
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(result.solution)]
        np.savez(out / f"{name}{index}.npz", *leaves)
        report = [(r["alpha"], r["seeds"], r["loaded"]) for r in chunks]
        stats = {k: np.asarray(v).tolist() for k, v in result.stats.items()}
        (out / f"{name}{index}.json").write_text(json.dumps(dict(chunks=report, stats=stats)))
    print("PROCESS DONE", flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, timeout=300):
    """Both processes; a failure of either ends the other (it would wait in a collective)."""
    script = tmp_path / "process.py"
    script.write_text(SCRIPT)
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        SADDLEJAX_CACHE_DIR="off",
        JAX_ENABLE_X64="1",
        SADDLEJAX_COORDINATOR=f"127.0.0.1:{_free_port()}",
        SADDLEJAX_NUM_PROCESSES=str(N_PROCESSES),
    )
    # the script sets the number of host devices itself; the other flags stay (the conftest's)
    env["XLA_FLAGS"] = " ".join(
        flag for flag in env.get("XLA_FLAGS", "").split() if "device_count" not in flag
    )
    logs = [tmp_path / f"log{i}.txt" for i in range(N_PROCESSES)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:  # the child holds its own copy of the handle
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(Path(__file__).parent), str(i),
                     str(tmp_path)],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=dict(env, SADDLEJAX_PROCESS_ID=str(i)),
                )
            )
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.poll() not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    text = "\n".join(f"--- process {i}:\n{log.read_text()[-3000:]}" for i, log in enumerate(logs))
    assert all(p.returncode == 0 for p in procs), text
    assert text.count("PROCESS DONE") == N_PROCESSES, text


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """The distributed run's folder, and the same sweep in this single process."""
    folder = tmp_path_factory.mktemp("distributed")
    start = time.perf_counter()
    _launch(folder)
    print(f"two processes: {time.perf_counter() - start:.1f} s")
    return folder, run_sweep()


def _load(folder, name, i):
    with np.load(folder / f"{name}{i}.npz") as f:
        leaves = [f[f"arr_{j}"] for j in range(len(f.files))]
    return leaves, json.loads((folder / f"{name}{i}.json").read_text())


@pytest.mark.parametrize("name", ["plain", "saved", "resumed"])
def test_every_process_returns_the_single_process_sweep(distributed, name):
    """Each process returns the whole grid, equal bit for bit to one process's sweep (the
    gather moves bytes; each trajectory is the same compiled solve wherever it runs)."""
    folder, reference = distributed
    want = [np.asarray(x) for x in jax.tree_util.tree_leaves(reference.solution)]
    for i in range(N_PROCESSES):
        got, record = _load(folder, name, i)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            assert (a.dtype, a.shape) == (b.dtype, b.shape)
            assert a.tobytes() == b.tobytes()
        assert record["stats"]["n_failed"] == reference.stats["n_failed"]
        assert len(record["stats"]["wall_time"]) == len(ALPHAS)


@pytest.mark.parametrize("name", ["plain", "saved", "resumed"])
def test_processes_solve_disjoint_balanced_shares(distributed, name):
    """The chunks each process reported cover the grid once, and each process holds one or two
    of the three chunks of every α."""
    folder, _ = distributed
    shares = [
        {(alpha, tuple(seeds)) for alpha, seeds, _ in _load(folder, name, i)[1]["chunks"]}
        for i in range(N_PROCESSES)
    ]
    every = {(a, tuple(SEEDS[lo : lo + CHUNK])) for a in ALPHAS for lo in range(0, 5, CHUNK)}
    assert shares[0].isdisjoint(shares[1])
    assert shares[0] | shares[1] == every
    for share in shares:
        assert {a: sum(x == a for x, _ in share) for a in ALPHAS} in (
            {ALPHAS[0]: 1, ALPHAS[1]: 2},
            {ALPHAS[0]: 2, ALPHAS[1]: 1},
        )


def test_shared_checkpoint_holds_every_chunk_and_resumes(distributed):
    """With a shared folder each process writes its own chunks (all six are there) and, run
    again, loads them instead of solving."""
    folder, _ = distributed
    files = sorted(p.name for p in (folder / "checkpoint").glob("*.eqx"))
    assert len(files) == len(ALPHAS) * 3, files
    assert (folder / "checkpoint" / "sweep.json").exists()
    for i in range(N_PROCESSES):
        saved, resumed = _load(folder, "saved", i)[1], _load(folder, "resumed", i)[1]
        assert saved["stats"]["chunks_loaded"] == 0
        assert resumed["stats"]["chunks_loaded"] == len(resumed["chunks"]) == 3
        assert all(loaded for _, _, loaded in resumed["chunks"])


@pytest.mark.parametrize(
    "env",
    [
        {"SADDLEJAX_COORDINATOR": "127.0.0.1:1234"},
        {"SADDLEJAX_COORDINATOR": "h:1", "SADDLEJAX_NUM_PROCESSES": "2",
         "SADDLEJAX_PROCESS_ID": "two"},
        {"SADDLEJAX_COORDINATOR": "h:1", "SADDLEJAX_NUM_PROCESSES": "2",
         "SADDLEJAX_PROCESS_ID": "2"},
    ],
)
def test_incomplete_or_wrong_environment_is_refused(monkeypatch, env):
    """The CLI's start of `jax.distributed` refuses a partial or invalid setting before it
    starts anything, and does nothing without one."""
    for name in ("SADDLEJAX_COORDINATOR", "SADDLEJAX_NUM_PROCESSES", "SADDLEJAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert initialize_from_env() is False
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="SADDLEJAX_"):
        initialize_from_env()
