"""Diagnostics of trajectories and their comparison with the theory: ranks and plateaus,
alignment modulo symmetries, escape paths against the engine's flows, Hessian spectra and matrix
diagnostics of layered nets (SPEC §2, §5, §7, §8)."""

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
from ._matrices import (
    balancedness as balancedness,
    balancedness_drift as balancedness_drift,
    effective_rank as effective_rank,
    layer_norms as layer_norms,
    nuclear_norm as nuclear_norm,
    singular_values as singular_values,
)
from ._plateaus import (
    LossStaircase as LossStaircase,
    detect_plateaus as detect_plateaus,
)
from ._ranks import (
    Plateau as Plateau,
    find_plateaus as find_plateaus,
    numerical_rank as numerical_rank,
)
from ._spectra import (
    HessianSpectrum as HessianSpectrum,
    hessian_spectrum as hessian_spectrum,
    trajectory_spectra as trajectory_spectra,
)
