import random

import jax
import jax.random as jr
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A function returning fresh PRNG keys; prints the seed so a failure can be reproduced."""
    seed = random.randint(0, 2**31 - 1)
    print(f"getkey seed: {seed}")
    keys = iter(jr.split(jr.key(seed), 10_000))
    return lambda: next(keys)
