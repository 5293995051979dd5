"""Diagnostics of trajectories and their comparison with the theory: ranks and plateaus,
alignment modulo symmetries, escape paths against the engine's flows, Hessian spectra and matrix
diagnostics of layered nets (SPEC §2, §5, §7, §8)."""

from ._alignment import (
    gauge_aligned as gauge_aligned,
    has_gauge as has_gauge,
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
from ._greedy import (
    GreedyLowRank as GreedyLowRank,
    GreedySaddle as GreedySaddle,
    GreedyStage as GreedyStage,
    greedy_low_rank as greedy_low_rank,
)
from ._kinks import (
    KinkDescent as KinkDescent,
    kink_descent as kink_descent,
)
from ._limiting import (
    LimitingPaths as LimitingPaths,
    limiting_paths as limiting_paths,
)
from ._matrices import (
    balancedness as balancedness,
    balancedness_drift as balancedness_drift,
    bottleneck_rank as bottleneck_rank,
    effective_rank as effective_rank,
    layer_norms as layer_norms,
    layer_ranks as layer_ranks,
    nuclear_norm as nuclear_norm,
    singular_values as singular_values,
)
from ._plateaus import (
    LossStaircase as LossStaircase,
    detect_plateaus as detect_plateaus,
)
from ._ranks import (
    numerical_rank as numerical_rank,
)
from ._regimes import (
    distance_exponents as distance_exponents,
    expected_dln_ntk as expected_dln_ntk,
    matrix_ntk as matrix_ntk,
    minimum_distance_bound as minimum_distance_bound,
    ntk as ntk,
    ntk_change as ntk_change,
    saddle_distance_bound as saddle_distance_bound,
)
from ._saddle_chain import (
    ChainBranch as ChainBranch,
    ChainPath as ChainPath,
    ChainSaddle as ChainSaddle,
    SaddleChain as SaddleChain,
    saddle_chain as saddle_chain,
)
from ._scaling import (
    EscapeTimeScaling as EscapeTimeScaling,
    escape_time_scaling as escape_time_scaling,
)
from ._spectra import (
    HessianSpectrum as HessianSpectrum,
    hessian_spectrum as hessian_spectrum,
    spectrum_observable as spectrum_observable,
    trajectory_spectra as trajectory_spectra,
)
from ._two_layer import (
    CLWDiagnostics as CLWDiagnostics,
    CLWMilestones as CLWMilestones,
    CLWScales as CLWScales,
    CLWTimes as CLWTimes,
    DirectionalConvergence as DirectionalConvergence,
    NeuronDirections as NeuronDirections,
    clw_diagnostics as clw_diagnostics,
    clw_milestones as clw_milestones,
    clw_predicted_times as clw_predicted_times,
    clw_scales as clw_scales,
    directional_convergence as directional_convergence,
    kkt_distance as kkt_distance,
    neuron_directions as neuron_directions,
    neuron_kkt_points as neuron_kkt_points,
    wasserstein_1d as wasserstein_1d,
)
