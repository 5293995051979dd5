"""Sweeps over several processes (`jax.distributed`): which chunks each process solves, and the
gather that gives every process the whole grid.

Chunk k of a sweep (α-major: every chunk of α₀, then of α₁, ...) belongs to process
k mod `jax.process_count()`, so each process holds ⌊c/P⌋ or ⌈c/P⌉ of the c chunks of every α
and the slow small-α chunks are spread as evenly as the fast ones. The gather is
`jax.experimental.multihost_utils.process_allgather` (a collective: gloo on CPUs, NCCL on GPUs),
so the checkpoint folder need not be shared between hosts.
"""

import hashlib
import math
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

# Bytes received per collective of the gather: bounds the device memory it uses.
_GATHER_BYTES = 2**26


def process_share(n_chunks: int) -> list[int]:
    """The indices of the chunks that this process solves: every `jax.process_count()`-th,
    from `jax.process_index()`."""
    return list(range(jax.process_index(), n_chunks, jax.process_count()))


def local_devices(devices) -> list:
    """`devices` (default: this process's `jax.local_devices()`), refusing a device of another
    process: a sweep's chunks run on the devices of the process that solves them."""
    if devices is None:
        return jax.local_devices()
    devices = list(devices)
    foreign = [d for d in devices if d.process_index != jax.process_index()]
    if foreign:
        raise ValueError(
            f"`devices` must be devices of this process (jax.local_devices()), got {foreign} "
            f"of other processes; each process of a multi-process sweep uses its own devices."
        )
    return devices


def _gather_flags(flag: bool) -> np.ndarray:
    return multihost_utils.process_allgather(np.int8(flag)).reshape(-1)


def check_same_sweep(*settings) -> None:
    """Raise a `ValueError` in every process unless all processes run a sweep with the same
    `settings` (arrays or their reprs): the gather pairs chunks by index."""
    h = hashlib.sha256()
    for s in settings:
        h.update(s.tobytes() if isinstance(s, np.ndarray) else repr(s).encode())
    digests = multihost_utils.process_allgather(np.frombuffer(h.digest(), np.uint8))
    differ = [p for p in range(len(digests)) if (digests[p] != digests[0]).any()]
    if differ:
        raise ValueError(
            f"processes {differ} run a sweep with another grid, chunk size or batching than "
            "process 0; every process must call `sweep` with the same arguments."
        )


def first_then_others(fn):
    """`fn()` in process 0, then in the other processes once it has returned (e.g. process 0
    writes a shared folder's `sweep.json`, the others read it). An exception in any process is
    raised in all of them, so that none waits in a later collective."""
    if jax.process_count() == 1:
        return fn()
    out, error = None, None
    for stage in (0, 1):
        if (jax.process_index() == 0) == (stage == 0):
            try:
                out = fn()
            except Exception as e:
                error = e
        failed = _gather_flags(error is not None)
        if error is not None:
            raise error
        if failed.any():
            raise ValueError(
                f"process {int(np.argmax(failed))} stopped the sweep (its error is above, in "
                "its own output)."
            )
    return out


def gather_chunks(parts: list, like, sizes: list[int]) -> list:
    """Every process's chunks, in every process. `parts[k]` is chunk k when this process solved
    it (`process_share`) and None otherwise; `like` is the shape of a chunk of `max(sizes)`
    seeds (`eqx.filter_eval_shape`); chunk k has `sizes[k]` seeds. The chunks travel as bytes,
    so a gathered chunk equals the solved one bit for bit."""
    n_proc, me = jax.process_count(), jax.process_index()
    specs, treedef = jax.tree_util.tree_flatten(like)
    arrays = [s for s in specs if isinstance(s, jax.ShapeDtypeStruct)]
    width = sum(math.prod(s.shape) * np.dtype(s.dtype).itemsize for s in arrays)

    def pack(sol):
        out = []
        for leaf, s in zip(treedef.flatten_up_to(sol), specs):
            if isinstance(s, jax.ShapeDtypeStruct):
                full = np.zeros(s.shape, s.dtype)
                full[: len(leaf)] = np.asarray(leaf)
                out.append(full.reshape(-1).view(np.uint8))
        return np.concatenate(out)

    def unpack(row, n):
        leaves, at = [], 0
        for s in specs:
            if isinstance(s, jax.ShapeDtypeStruct):
                size = math.prod(s.shape) * np.dtype(s.dtype).itemsize
                leaves.append(row[at : at + size].view(s.dtype).reshape(s.shape)[:n].copy())
                at += size
            else:
                leaves.append(s)
        return treedef.unflatten(leaves)

    parts = list(parts)
    rounds = math.ceil(len(parts) / n_proc)  # chunk k is round k // P of process k % P
    step = max(1, _GATHER_BYTES // max(1, n_proc * width))
    for r0 in range(0, rounds, step):
        block = np.zeros((min(step, rounds - r0), width), np.uint8)
        for j in range(len(block)):
            k = (r0 + j) * n_proc + me
            if k < len(parts):
                block[j] = pack(parts[k])
        got = multihost_utils.process_allgather(block)
        for p in range(n_proc):
            for j in range(len(block)):
                k = (r0 + j) * n_proc + p
                if k < len(parts) and parts[k] is None:
                    parts[k] = unpack(got[p, j], sizes[k])
    return parts


def initialize_from_env(auto: bool = False) -> bool:
    """Start `jax.distributed` before JAX computes anything: from `SADDLEJAX_COORDINATOR`
    (host:port of process 0), `SADDLEJAX_NUM_PROCESSES` and `SADDLEJAX_PROCESS_ID` when
    set, else, when `auto`, by JAX's detection of the cluster (SLURM, Open MPI, Kubernetes,
    cloud TPU). Returns whether it started."""
    names = ("SADDLEJAX_COORDINATOR", "SADDLEJAX_NUM_PROCESSES", "SADDLEJAX_PROCESS_ID")
    if jax.distributed.is_initialized():  # by the program that calls the CLI
        return True
    given = [n for n in names if os.environ.get(n)]
    if given:
        if len(given) < len(names):
            missing = ", ".join(n for n in names if n not in given)
            raise ValueError(f"{', '.join(given)} set without {missing}; set all three or none")
        try:
            n_proc, index = (int(os.environ[n]) for n in names[1:])
        except ValueError:
            raise ValueError(f"{names[1]} and {names[2]} must be integers") from None
        if not 0 <= index < n_proc:
            raise ValueError(f"{names[2]}={index} must be in [0, {names[1]}={n_proc})")
        args = (os.environ[names[0]], n_proc, index)
    elif auto:
        args = ()
    else:
        return False
    try:
        jax.distributed.initialize(*args)
    except (RuntimeError, ValueError) as e:  # JAX already running, or no cluster detected
        raise ValueError(f"cannot start jax.distributed: {e}") from None
    return True
