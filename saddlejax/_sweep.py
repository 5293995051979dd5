"""Vectorised sweeps over seeds × α: vmap within an α, chunks to a memory bound, shards across
devices, and checkpoints each finished chunk so an interrupted sweep loses no finished work."""

import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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


def _on(tree, device):
    """`tree` with its arrays committed to `device` (other leaves unchanged)."""
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, device) if eqx.is_array(x) else x, tree
    )


def _map_over_devices(fn: Callable, n: int, devices: Sequence) -> list:
    """[fn(i, device) for i in range(n)], run with one thread per device, each device taking
    the next index as soon as it is free (a shared queue, so one slow trajectory does not hold
    the others up). XLA releases the GIL while it computes, so the devices run concurrently;
    an exception in any worker is raised here."""
    lock = threading.Lock()
    counter = iter(range(n))
    out = [None] * n

    def worker(device):
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            out[i] = jax.block_until_ready(fn(i, device))

    with ThreadPoolExecutor(len(devices)) as pool:
        for f in [pool.submit(worker, d) for d in devices]:
            f.result()
    return out


def _chunk_runner(objective, init, *, n_save, trainable, flow_options, devices, batching):
    """A function (keys, alpha, t1, rtol, atol) → FlowSolution batched over keys."""
    config = dict(n_save=n_save, trainable=trainable, flow_options=flow_options)

    if batching == "loop":
        local = {d: _on(objective, d) for d in devices} if len(devices) > 1 else None

        def looped(keys, *args):
            n = keys.shape[0]
            if isinstance(keys, jax.core.Tracer):  # under filter_eval_shape: shapes only
                sol = _run_one(objective, init, keys[0], *args, config)
                return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), sol)
            if local is None:
                sols = [_run_one(objective, init, keys[i], *args, config) for i in range(n)]
            else:

                def one(i, device):
                    key, rest = _on((keys[i], args), device)
                    return _run_one(local[device], init, key, *rest, config)

                sols = _map_over_devices(one, n, devices)
            # Stacked on the host: one copy per leaf from any device, instead of a dispatched
            # `jnp.stack` per leaf (≈ 0.5 ms each, 40 % of a 16-seed sweep of short solves).
            return jax.tree_util.tree_map(
                lambda *xs: jnp.asarray(np.stack([np.asarray(x) for x in xs])), *sols
            )

        return looped

    def vmapped(keys, *args):
        return _run_batch(objective, init, keys, *args, config, tuple(devices))

    return vmapped


def _resolve_batching(batching: str, devices) -> str:
    if batching not in ("auto", "vmap", "loop"):
        raise ValueError(f"`batching` must be 'auto', 'vmap' or 'loop', got {batching!r}.")
    if batching != "auto":
        return batching
    # CPU: loop. A vmapped adaptive solve runs every member for the slowest member's step count
    # and a batched gradient costs more per member than a single one: on 2 cores a vmapped batch
    # of 8 had 0.49× the throughput of one trajectory, and even sharded over 8 host devices of
    # a 16-core CPU 0.27× (benchmarks/README.md, session 4). A loop over seeds, spread over
    # several host devices by threads, runs each trajectory for its own steps (×1.9 on 2
    # devices of 2 cores). Accelerators vmap (×14 at 64 seeds on an H200), sharded across
    # several devices.
    return "loop" if all(d.platform == "cpu" for d in devices) else "vmap"


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

    On accelerators the seeds of one α are batched with `vmap` (an adaptive solve under vmap runs
    until its slowest member finishes, so different α — whose plateaus differ by orders of
    magnitude — are never batched together), in chunks of `chunk_size` (a memory bound), each
    chunk sharded across `devices` with `jax.shard_map` when there are several. On CPUs each
    seed is its own solve, and with several host devices the seeds are spread over them by one
    thread per device, each taking the next seed when free (set the number of host devices
    before JAX starts: `jax.config.update("jax_num_cpu_devices", n)` or
    `XLA_FLAGS=--xla_force_host_platform_device_count=n`; the CLI uses one per core). α, t1 and
    the tolerances are traced arguments: a new α does not recompile, and neither does a second
    sweep with the same objective structure, `init` function and options. Failed trajectories
    keep their `RESULTS` code and do not affect the others.

    Other conventions: for Jacot's σ² = w^{−γ} use `alphas=[init.alpha_from_gamma(w, γ, σ̃) ...]`,
    for Chen–Luo–Wang's m^{−α_CL} use `init.alpha_from_clw` (SPEC §1).

    **Arguments:**

    - `objective`: the loss, as for `gradient_flow`.
    - `init`: `key -> θ̃`, the unit-scale draw, e.g. `lambda k: DeepLinear(widths, key=k)`.
    - `t1`: final time, or a function of α (plateaus last ~α^{−(L−2)}, or log(1/α) for L = 2).
    - `alphas`, `seeds`: the grid. Seed s uses `jax.random.key(s)`.
    - `chunk_size`: seeds per chunk, the unit of checkpointing and, for "vmap", of one batched
        solve (default: all); under "vmap" the last chunk is padded.
    - `batching`: "vmap" (one batched solve per chunk), "loop" (one compiled single-trajectory
        solve per seed, spread over the devices) or "auto": loop on CPUs, where it measured
        faster (benchmarks/README.md, session 4), vmap on accelerators.
    - `devices`: the devices to use (default: all of `jax.devices()`); under "vmap" the chunk
        size is rounded up to a multiple of their number.
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
    batching = _resolve_batching(batching, devices)
    if batching == "vmap":  # one batch per chunk, split evenly over the devices
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
        batching=batching,
    )
    nan = float("nan")
    per_alpha, wall = [], []
    for i, alpha in enumerate(alphas):
        start = time.perf_counter()
        parts = []
        for lo in range(0, seeds.size, chunk):
            chunk_seeds = seeds[lo : lo + chunk]
            n_pad = chunk - chunk_seeds.size if batching == "vmap" else 0
            pad = np.full(n_pad, chunk_seeds[-1])
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
