"""Vectorised sweeps over seeds × α: vmap within an α, chunks to a memory bound, shards across
devices, and checkpoints each finished chunk so an interrupted sweep loses no finished work."""

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jax.sharding import PartitionSpec

from ._flow import _as_save_times, _Problem, _solve, validate_flow_args
from ._init_scale import scale
from ._solution import RESULTS, FlowSolution
from ._solvers import KrylovSettings


class SweepResult(eqx.Module):
    """Trajectories of a sweep: `solution` has leading axes (α, seed).

    **Fields:** `alphas` (n_alpha,), `seeds` (n_seed,), `solution` (a `FlowSolution`),
    `wall_time` (seconds per α, compile included for the first chunk).
    """

    alphas: np.ndarray
    seeds: np.ndarray
    solution: FlowSolution
    wall_time: np.ndarray

    def failures(self) -> list[tuple[float, int, str]]:
        """(α, seed, message) for every trajectory whose result is not successful."""
        codes = np.asarray(self.solution.result._value)
        out = []
        for i, j in zip(*np.nonzero(codes != RESULTS.successful._value)):
            out.append(
                (float(self.alphas[i]), int(self.seeds[j]), RESULTS._index_to_message[codes[i, j]])
            )
        return out


def _one(objective, init, key, alpha, t1, rtol, atol, *, n_save, trainable, flow_options):
    """One trajectory from θ₀ = α·init(key); α, t1, rtol, atol are traced (no retrace)."""
    params0 = scale(init(key), alpha)
    state0, static = eqx.partition(params0, trainable)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(state0))
    t1 = t1.astype(dtype)
    # The default save grid of `gradient_flow`, scaled to this α's t1 (traced: no retrace).
    ts = t1 * jnp.asarray(_as_save_times(None, 0.0, 1.0, n_save), dtype)
    return _solve(
        _Problem(objective, static),
        state0,
        jnp.zeros((), dtype),
        t1,
        ts,
        rtol.astype(dtype),
        atol.astype(dtype),
        None,
        **flow_options,
    )


# Module-level jitted entry points, so that a second `sweep` with the same objective *structure*,
# `init` function, options and devices reuses the compiled code (the objective's arrays are
# arguments, not constants). A fresh closure per call recompiled every sweep (session 4).
@eqx.filter_jit
def _run_one(objective, init, key, alpha, t1, rtol, atol, config):
    return _one(objective, init, key, alpha, t1, rtol, atol, **config)


@eqx.filter_jit
def _run_batch(objective, init, keys, alpha, t1, rtol, atol, config, devices):
    dynamic, static = eqx.partition(objective, eqx.is_array)

    def batched(dynamic, keys, alpha, t1, rtol, atol):
        obj = eqx.combine(dynamic, static)
        return jax.vmap(
            lambda k: _one(obj, init, k, alpha, t1, rtol, atol, **config)
        )(keys)

    if len(devices) > 1:
        mesh = jax.sharding.Mesh(np.asarray(devices), ("seeds",))
        rep = PartitionSpec()
        batched = jax.shard_map(
            batched,
            mesh=mesh,
            in_specs=(rep, PartitionSpec("seeds"), rep, rep, rep, rep),
            out_specs=PartitionSpec("seeds"),
            check_vma=False,
        )
    return batched(dynamic, keys, alpha, t1, rtol, atol)


def _chunk_runner(objective, init, *, n_save, trainable, flow_options, devices, batching):
    """A function (keys, alpha, t1, rtol, atol) → FlowSolution batched over keys."""
    config = dict(n_save=n_save, trainable=trainable, flow_options=flow_options)

    if batching == "loop":

        def looped(keys, *args):
            sols = [
                _run_one(objective, init, keys[i], *args, config) for i in range(keys.shape[0])
            ]
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *sols)

        return looped

    def vmapped(keys, *args):
        return _run_batch(objective, init, keys, *args, config, tuple(devices))

    return vmapped


def _resolve_batching(batching: str, devices) -> str:
    if batching not in ("auto", "vmap", "loop"):
        raise ValueError(f"`batching` must be 'auto', 'vmap' or 'loop', got {batching!r}.")
    if batching != "auto":
        return batching
    # Measured on a 2-core CPU (Jacot Fig. 1 problem, 4 seeds): a vmapped adaptive solve runs
    # every member for the slowest member's step count, and each batched step cost ~2.8× a
    # single one, so looping over seeds was ~7× faster. Accelerators and several devices vmap.
    return "loop" if len(devices) == 1 and devices[0].platform == "cpu" else "vmap"


def _checkpoint_path(directory: Path, i_alpha: int, alpha: float, seeds: np.ndarray) -> Path:
    return directory / f"alpha{i_alpha:03d}_{alpha:.6e}_seeds{seeds[0]}-{seeds[-1]}.eqx"


def sweep(
    objective: Callable,
    init: Callable,
    t1: float | Callable[[float], float],
    *,
    alphas: Sequence[float],
    seeds: Sequence[int] = tuple(range(8)),
    chunk_size: int | None = None,
    batching: str = "auto",
    devices: Sequence | None = None,
    checkpoint: str | Path | None = None,
    n_save: int = 256,
    solver="tsit5",
    rtol: float = 1e-6,
    atol: float | None = None,
    event=None,
    stop_at_event: bool = True,
    trainable=eqx.is_inexact_array,
    max_steps: int = 1_000_000,
    record_steps: bool = False,
    observe: Callable | None = None,
    krylov: KrylovSettings | None = None,
    progress: Callable[[str], None] | None = print,
) -> SweepResult:
    """Gradient flows from θ₀ = α·θ̃(seed) for every α × seed (SPEC §1, §8).

    Within one α the seeds are batched with `vmap` (an adaptive solve under vmap runs until its
    slowest member finishes, so different α — whose plateaus differ by orders of magnitude — are
    never batched together; α is a traced argument, so changing it does not recompile). Seeds run
    in chunks of `chunk_size` (a memory bound), each chunk sharded across `devices` with
    `jax.shard_map` when there are several. Failed trajectories keep their `RESULTS` code and do
    not affect the others.

    Other conventions: for Jacot's σ² = w^{−γ} use `alphas=[init.alpha_from_gamma(w, γ, σ̃) ...]`,
    for Chen–Luo–Wang's m^{−α_CL} use `init.alpha_from_clw` (SPEC §1).

    **Arguments:**

    - `objective`: the loss, as for `gradient_flow`.
    - `init`: `key -> θ̃`, the unit-scale draw, e.g. `lambda k: DeepLinear(widths, key=k)`.
    - `t1`: final time, or a function of α (plateaus last ~α^{−(L−2)}, or log(1/α) for L = 2).
    - `alphas`, `seeds`: the grid. Seed s uses `jax.random.key(s)`.
    - `chunk_size`: seeds per compiled batch (default: all); the last chunk is padded.
    - `batching`: "vmap" (one batched solve per chunk), "loop" (one compiled single-trajectory
        solve per seed) or "auto": loop on a single CPU device, where it measured faster, vmap on
        accelerators and across several devices.
    - `devices`: devices to shard a chunk over (default: all of `jax.devices()`); the chunk size
        is rounded up to a multiple of their number.
    - `checkpoint`: a directory; each finished (α, chunk) is written there and skipped when the
        sweep is run again, so an interrupted sweep resumes where it stopped. Use one directory
        per sweep configuration.
    - `progress`: called with a line of text after each chunk (default `print`; None for quiet).
    - The other keywords are those of `gradient_flow` (`throw` is always False here: read
        `SweepResult.failures()`).

    **Returns:** a `SweepResult`.
    """
    alphas = np.asarray(alphas, dtype=float).reshape(-1)
    seeds = np.asarray(seeds, dtype=int).reshape(-1)
    if alphas.size == 0 or seeds.size == 0:
        raise ValueError("`alphas` and `seeds` must each hold at least one value.")
    if np.any(~(alphas > 0)):
        raise ValueError(f"every α in `alphas` must be positive, got {alphas.tolist()}.")
    t1_of = t1 if callable(t1) else (lambda _: t1)
    for alpha in alphas:
        validate_flow_args(0.0, float(t1_of(alpha)), rtol, atol, solver, max_steps)
    devices = list(jax.devices() if devices is None else devices)
    chunk = seeds.size if chunk_size is None else int(chunk_size)
    if chunk <= 0:
        raise ValueError(f"`chunk_size` must be a positive int, got {chunk_size!r}.")
    chunk = math.ceil(chunk / len(devices)) * len(devices)
    directory = None if checkpoint is None else Path(checkpoint)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "sweep.json").write_text(
            json.dumps({"alphas": alphas.tolist(), "seeds": seeds.tolist(), "chunk": chunk})
        )
    flow_options = dict(
        solver=solver,
        krylov=krylov,
        event=event,
        stop_at_event=stop_at_event,
        observe=observe,
        record_steps=record_steps,
        max_steps=max_steps,
        progress=False,
    )
    runner = _chunk_runner(
        objective,
        init,
        n_save=n_save,
        trainable=trainable,
        flow_options=flow_options,
        devices=devices,
        batching=_resolve_batching(batching, devices),
    )
    nan = float("nan")
    per_alpha, wall = [], []
    for i, alpha in enumerate(alphas):
        start = time.perf_counter()
        parts = []
        for lo in range(0, seeds.size, chunk):
            chunk_seeds = seeds[lo : lo + chunk]
            pad = np.full(chunk - chunk_seeds.size, chunk_seeds[-1])
            padded = np.concatenate([chunk_seeds, pad])
            args = (
                jax.vmap(jr.key)(jnp.asarray(padded)),
                jnp.asarray(alpha),
                jnp.asarray(float(t1_of(alpha))),
                jnp.asarray(rtol),
                jnp.asarray(nan if atol is None else atol),
            )
            path = None if directory is None else _checkpoint_path(directory, i, alpha, chunk_seeds)
            if path is not None and path.exists():
                like = eqx.filter_eval_shape(runner, *args)
                sol = eqx.tree_deserialise_leaves(path, like)
                status = "loaded from checkpoint"
            else:
                sol = runner(*args)
                sol = jax.block_until_ready(sol)
                if path is not None:
                    tmp = path.with_suffix(".tmp")
                    eqx.tree_serialise_leaves(tmp, sol)
                    tmp.replace(path)  # atomic: a half-written chunk is never taken as done
                status = f"{time.perf_counter() - start:.1f}s"
            parts.append(jax.tree_util.tree_map(lambda x: x[: chunk_seeds.size], sol))
            if progress is not None:
                n_bad = int(np.sum(np.asarray(parts[-1].result._value) != 0))
                progress(
                    f"  α = {alpha:.3g}: seeds {chunk_seeds[0]}–{chunk_seeds[-1]} done ({status})"
                    + (f", {n_bad} failed" if n_bad else "")
                )
        per_alpha.append(_concat(parts))
        wall.append(time.perf_counter() - start)
    solution = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_alpha)
    return SweepResult(alphas, seeds, solution, np.asarray(wall))


def _concat(parts):
    if len(parts) == 1:
        return parts[0]
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts)
