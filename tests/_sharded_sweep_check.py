"""The sweep configuration shared by tests/test_sweep.py and its sharded run.

Run as a script (by tests/test_sweep.py, in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=4), it runs the sweep sharded across the 4
host devices, checks that every chunk's outputs live on all 4 devices, and writes the solution's
leaves to the .npz file named on the command line; the test compares them with the
single-device sweep. Then it runs the sweep with batching="loop" (seeds spread over the devices
by threads), checks that more than one device did work and that the result equals the loop on
one device. Prints "SHARDED SWEEP OK" and "LOOP OVER DEVICES OK" and exits 0 on success.
"""

import sys

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import saddlejax as sj
from saddlejax import init
from saddlejax.flow import _sweep as sweep_module
from saddlejax.nn import DeepLinear

WIDTHS = (3, 4, 4, 3)
ALPHAS = (0.3, 0.1)
SEEDS = (0, 1, 2, 3, 4)
BAD_SEED = 3
MAX_STEPS = 4000
# Tsit5: BAD_SEED's flow is then too stiff to finish within MAX_STEPS (a failing member).
SWEEP_KW = dict(
    n_save=8, rtol=1e-8, max_steps=MAX_STEPS, progress=False, solver=diffrax.Tsit5()
)


def draw(key):
    """θ̃(seed): a DLN draw; the draw of BAD_SEED alone is blown up by 1e4, so that its flow is
    too stiff to integrate within MAX_STEPS (a failing trajectory inside a vmapped batch)."""
    net = DeepLinear(WIDTHS, key=key)
    return init.scale(net, jnp.where(jr.key_data(key)[-1] == BAD_SEED, 1e4, 1.0))


def t1_of(alpha):
    # The depth-3 plateau lasts ∝ 1/α: a horizon that covers the escape at every α.
    return 3.0 / alpha


def make_problem():
    return sj.matrix_completion_problem(jr.key(0), n=3, rank=2, observed=0.7)


def main(out_path):
    devices = jax.devices()
    assert len(devices) == 4, f"expected 4 host devices, got {devices}"

    # Record where the chunk runner puts its outputs (without compiling anything extra).
    placements = []
    real_factory = sweep_module._chunk_runner

    def recording_factory(*args, **kwargs):
        runner = real_factory(*args, **kwargs)

        def recorded(*a):
            out = runner(*a)
            if not isinstance(out.loss, jax.core.Tracer):
                placements.append(len(out.loss.sharding.device_set))
            return out

        return recorded

    sweep_module._chunk_runner = recording_factory
    # 5 seeds in one chunk: rounded up to 8 (a multiple of the 4 devices) and padded.
    result = sj.sweep(
        make_problem(), draw, t1_of, alphas=ALPHAS, seeds=SEEDS, devices=devices,
        batching="vmap", **SWEEP_KW,
    )
    assert placements == [4] * len(ALPHAS), f"chunk outputs on {placements} devices, not 4"
    sweep_module._chunk_runner = real_factory
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(result.solution)]
    np.savez(out_path, *leaves)

    # batching="loop": one solve per seed, spread over the 4 devices by threads. Record on which
    # device each seed ran; the result must equal the same loop on one device.
    used = []
    real_run_one = sweep_module._run_one

    def recording_run_one(objective, draw_, key, *rest):
        used.append(next(iter(key.devices())))
        return real_run_one(objective, draw_, key, *rest)

    sweep_module._run_one = recording_run_one
    looped = sj.sweep(
        make_problem(), draw, t1_of, alphas=ALPHAS, seeds=SEEDS, batching="loop", **SWEEP_KW
    )
    sweep_module._run_one = real_run_one
    assert len(used) == len(ALPHAS) * len(SEEDS), f"{len(used)} solves, no padding expected"
    assert len(set(used)) > 1, f"every seed ran on {set(used)}"
    alone = sj.sweep(
        make_problem(), draw, t1_of, alphas=ALPHAS, seeds=SEEDS, batching="loop",
        devices=devices[:1], **SWEEP_KW,
    )
    for a, b in zip(jax.tree_util.tree_leaves(looped.solution),
                    jax.tree_util.tree_leaves(alone.solution)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert looped.failures() == alone.failures()
    print(f"LOOP OVER DEVICES OK (seeds ran on {len(set(used))} devices)")
    print(f"SHARDED SWEEP OK ({len(leaves)} arrays, failures: {result.failures()})")


if __name__ == "__main__":
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    main(sys.argv[1])
