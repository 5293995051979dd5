"""sweep over α × seeds: equals a loop of gradient_flow, traces once, isolates failures, resumes
from checkpoints, and shards across devices."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.random as jr
import numpy as np
import pytest

# The configuration is shared with the sharded run (pytest puts tests/ on sys.path).
from _sharded_sweep_check import (
    ALPHAS,
    BAD_SEED,
    MAX_STEPS,
    SEEDS,
    SWEEP_KW,
    draw,
    make_problem as _problem,
    t1_of,
)

import saddlejax as sj
from saddlejax import init
from saddlejax.flow import _sweep as sweep_module


# On one CPU device `batching="auto"` loops over seeds; the vmapped path is tested explicitly.
@pytest.fixture(scope="module")
def swept():
    """One sweep over ALPHAS × SEEDS, counting how often the flow is traced."""
    problem = _problem()
    traces = []
    real_solve = sweep_module.solve_flow

    def counting_solve(*args, **kwargs):
        traces.append(1)  # runs only while tracing
        return real_solve(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_module, "solve_flow", counting_solve)
        result = sj.sweep(
            problem, draw, t1_of, alphas=ALPHAS, seeds=SEEDS, batching="vmap", **SWEEP_KW
        )
    return problem, result, len(traces)


def test_sweep_equals_python_loop(swept):
    """Each (α, seed) entry of a vmapped sweep equals gradient_flow from α·θ̃(seed) with the same
    save times, for the trajectories that succeed (SPEC §1; JAX contract: vmap = loop)."""
    problem, result, _ = swept
    sol = result.solution
    assert sol.loss.shape == (len(ALPHAS), len(SEEDS), 8)
    np.testing.assert_array_equal(result.alphas, ALPHAS)
    for i, alpha in enumerate(ALPHAS):
        for j, seed in enumerate(SEEDS):
            ref = sj.gradient_flow(
                problem, init.scale(draw(jr.key(seed)), alpha), t1_of(alpha),
                saveat=sol.ts[i, j], rtol=1e-8, max_steps=MAX_STEPS, throw=False,
                solver=SWEEP_KW["solver"],
            )
            assert bool((sol.result == ref.result)[i, j])
            if seed == BAD_SEED:
                continue
            # Same arithmetic batched and unbatched: differences are rounding in the batched
            # matmuls, which can flip an accept/reject decision only at the rtol = 1e−8 level.
            for w, w_ref in zip(sol.params.weights, ref.params.weights):
                np.testing.assert_allclose(w[i, j], w_ref, rtol=1e-7, atol=1e-12)
            np.testing.assert_allclose(sol.loss[i, j], ref.loss, rtol=1e-7, atol=1e-14)
            assert float(sol.loss[i, j, -1]) < float(sol.loss[i, j, 0])


def test_no_retrace_across_alpha(swept):
    """α, t1 and the tolerances are traced arguments: a sweep over two α values traces the flow
    once, so a new α does not recompile."""
    _, _, traces = swept
    assert traces == 1


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_second_sweep_does_not_recompile(batching):
    """A second `sweep` with the same objective structure, `init` and options reuses the compiled
    solve (module-level jit, objective arrays as arguments): no backend compilation happens, even
    with a new target matrix. Each call used to rebuild its jitted closure and recompile (~3 s
    here, as much as a short sweep)."""
    compiles = []
    listening = [False]

    def listener(name, _duration, **_):
        if listening[0] and name == "/jax/core/compile/backend_compile_duration":
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    kw = dict(alphas=[0.1], seeds=range(3), progress=False, batching=batching, n_save=4)
    first = sj.sweep(_problem(), draw, 20.0, **kw)
    other = sj.matrix_completion_problem(jr.key(7), n=3, rank=2, observed=0.7)
    listening[0] = True
    try:
        second = sj.sweep(other, draw, 20.0, **kw)
    finally:
        listening[0] = False
    assert compiles == []
    # It really ran the new problem (not a cached result).
    assert not np.allclose(np.asarray(first.solution.loss), np.asarray(second.solution.loss))


def test_failure_is_isolated(swept):
    """A trajectory that cannot be integrated is reported by SweepResult.failures() with its code
    while the other seeds of the same vmapped batch succeed (STYLE: errors)."""
    _, result, _ = swept
    failures = result.failures()
    assert sorted((a, s) for a, s, _ in failures) == sorted((a, BAD_SEED) for a in ALPHAS)
    # A ×1e4 draw makes the flow too stiff for MAX_STEPS explicit steps (or overflows).
    codes = (sj.RESULTS.max_steps_reached, sj.RESULTS.nonfinite_trajectory)
    allowed = {sj.RESULTS[c] for c in codes}
    assert {m for _, _, m in failures} <= allowed
    ok = np.asarray(result.solution.successful)
    assert ok[:, [s != BAD_SEED for s in SEEDS]].all()
    assert not ok[:, SEEDS.index(BAD_SEED)].any()


def test_checkpoint_resume(tmp_path):
    """An interrupted sweep (one chunk file missing) recomputes only that chunk when run again,
    and returns the same results as the uninterrupted sweep."""
    problem = _problem()
    kw = dict(alphas=ALPHAS, seeds=SEEDS, chunk_size=2, checkpoint=tmp_path, batching="loop",
              **SWEEP_KW)
    first = sj.sweep(problem, draw, t1_of, **kw)
    files = sorted(tmp_path.glob("*.eqx"))
    assert len(files) == len(ALPHAS) * 3  # chunks {0, 1}, {2, 3}, {4}
    missing = next(f for f in files if f.name.startswith("alpha001") and "seeds2-3" in f.name)
    missing.unlink()

    solved = []
    real_factory = sweep_module._chunk_runner

    def counting_factory(*args, **kwargs):
        runner = real_factory(*args, **kwargs)

        def counted(keys, alpha, *rest):
            if not isinstance(alpha, jax.core.Tracer):  # not filter_eval_shape's abstract call
                solved.append((float(alpha), tuple(np.asarray(jr.key_data(keys))[:, -1])))
            return runner(keys, alpha, *rest)

        return counted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep_module, "_chunk_runner", counting_factory)
        second = sj.sweep(problem, draw, t1_of, **kw)
    assert solved == [(ALPHAS[1], (2, 3))]
    assert missing.exists()
    for a, b in zip(jax.tree_util.tree_leaves(first.solution),
                    jax.tree_util.tree_leaves(second.solution)):
        # Loaded chunks are bit-identical; the recomputed one runs the same program.
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_sweep_matches_single_device(swept, tmp_path):
    """With 4 simulated CPU devices every chunk is sharded across them (jax.shard_map, padded to
    a multiple of 4) and the sweep equals the single-device vmapped sweep; the looped sweep
    spreads its seeds over the devices and equals the loop on one device (run in a subprocess:
    the device count is fixed at start-up)."""
    _, result, _ = swept
    script = Path(__file__).with_name("_sharded_sweep_check.py")
    out = tmp_path / "sharded.npz"
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(os.environ, XLA_FLAGS=flags)
    proc = subprocess.run(
        [sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SHARDED SWEEP OK" in proc.stdout, proc.stdout
    assert "LOOP OVER DEVICES OK" in proc.stdout, proc.stdout
    data = np.load(out)
    sharded = [data[f"arr_{i}"] for i in range(len(data.files))]
    single = [np.asarray(x) for x in jax.tree_util.tree_leaves(result.solution)]
    assert len(sharded) == len(single)
    for a, b in zip(sharded, single):
        assert a.shape == b.shape and a.dtype == b.dtype
        # The same per-seed program on another split of the batch: equal up to rounding in the
        # batched matmuls (measured: bit-identical); inf/NaN of the failed seed must match too.
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
