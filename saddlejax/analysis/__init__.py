"""Diagnostics of trajectories and their comparison with the theory: ranks and plateaus,
alignment modulo symmetries, escape paths against the engine's flows (SPEC §2, §7, §8)."""

from ._alignment import (
    procrustes_rotations as procrustes_rotations,
    rotate_hidden as rotate_hidden,
)
from ._escape_paths import (
    BijectionCheck as BijectionCheck,
    SimulationComparison as SimulationComparison,
    check_bijection as check_bijection,
    forward_integration as forward_integration,
    forward_integration_distance as forward_integration_distance,
    simulation_distances as simulation_distances,
)
from ._ranks import (
    Plateau as Plateau,
    find_plateaus as find_plateaus,
    numerical_rank as numerical_rank,
)
