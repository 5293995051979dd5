"""Running independent trajectories on several devices of one process."""

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax


def on_device(tree, device):
    """`tree` with its arrays committed to `device` (other leaves unchanged)."""
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(x, device) if eqx.is_array(x) else x, tree
    )


def map_over_devices(fn: Callable, n: int, devices: Sequence) -> list:
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


def resolve_batching(batching: str, devices) -> str:
    """ "loop" on CPUs, "vmap" on accelerators, for `batching="auto"`.

    A vmapped adaptive solve runs every member for the slowest member's step count, and on a CPU
    a batched gradient costs more per member than a single one: a vmapped batch of 8 has about
    half the throughput of one trajectory on 2 cores, and a loop over seeds spread over the
    host devices by threads runs each trajectory for its own steps. On accelerators a vmapped
    batch of 64 has ×14 the throughput of one trajectory (benchmarks/README.md).
    """
    if batching not in ("auto", "vmap", "loop"):
        raise ValueError(f"`batching` must be 'auto', 'vmap' or 'loop', got {batching!r}.")
    if batching != "auto":
        return batching
    return "loop" if all(d.platform == "cpu" for d in devices) else "vmap"
