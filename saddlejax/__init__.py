"""saddlejax: gradient-flow dynamics of neural networks from small initialization.

Integrate gradient flow as a (stiff) ODE with diffrax, follow it from saddle to saddle, and
compute the theory's objects: homogeneous Taylor terms, escape directions and speeds, escape
paths as fixed points of the contraction map Φ, and the bijection Ψ (Jacot et al.; Kumar & Haupt;
Chen, Luo & Wang). See SPEC.md for the mathematics.
"""

from . import init as init, nn as nn
from ._auto import AutoStiff as AutoStiff

# --- escape paths, Φ and Ψ (issue 4) ---
from ._bijection import (
    BijectionCheck as BijectionCheck,
    SimulationComparison as SimulationComparison,
    check_bijection as check_bijection,
    closeness as closeness,
    fit_closeness_rate as fit_closeness_rate,
    fit_escape_speed as fit_escape_speed,
    forward_integration as forward_integration,
    forward_integration_distance as forward_integration_distance,
    path_distance as path_distance,
    procrustes_rotations as procrustes_rotations,
    psi as psi,
    psi_inverse as psi_inverse,
    rotate_hidden as rotate_hidden,
    simulation_distances as simulation_distances,
    speed_threshold as speed_threshold,
    theory_closeness_rate as theory_closeness_rate,
)
from ._contraction import (
    CONTRACTION_RESULTS as CONTRACTION_RESULTS,
    FixedPointSolution as FixedPointSolution,
    contraction_map as contraction_map,
    default_exponent as default_exponent,
    fixed_point_iteration as fixed_point_iteration,
    integrate_path as integrate_path,
    ode_residual as ode_residual,
    time_derivative as time_derivative,
    weighted_norm as weighted_norm,
)
from ._data import (
    TrainTest as TrainTest,
    clw_problem as clw_problem,
    diagonal_teacher_problem as diagonal_teacher_problem,
    matrix_completion_problem as matrix_completion_problem,
    noisy_low_rank_problem as noisy_low_rank_problem,
    random_mask as random_mask,
    squared_relu_toy_problem as squared_relu_toy_problem,
)
from ._descent import gradient_descent as gradient_descent

# --- Taylor terms and escape directions (issue 3) ---
from ._dln_closed_form import (
    DLNEscapeDirection as DLNEscapeDirection,
    dln_escape_direction as dln_escape_direction,
    dln_optimal_speed as dln_optimal_speed,
    dln_speeds as dln_speeds,
    dln_taylor_term as dln_taylor_term,
)
from ._escape import (
    ESCAPE_RESULTS as ESCAPE_RESULTS,
    EscapeDirections as EscapeDirections,
    HessianEigenpairs as HessianEigenpairs,
    StrictnessTest as StrictnessTest,
    dln_invariant as dln_invariant,
    escape_speed as escape_speed,
    hessian_negative_eigenpairs as hessian_negative_eigenpairs,
    kkt_residual as kkt_residual,
    neuron_invariant as neuron_invariant,
    optimal_escape as optimal_escape,
    refine_escape_direction as refine_escape_direction,
    strictness_test as strictness_test,
)
from ._events import (
    AbstractFlowEvent as AbstractFlowEvent,
    EscapeRadius as EscapeRadius,
    LossBelow as LossBelow,
)
from ._flow import gradient_flow as gradient_flow, raise_if_failed as raise_if_failed
from ._ncf import (
    NCF as NCF,
    NCFKKTPoints as NCFKKTPoints,
    ncf as ncf,
    ncf_from_objective as ncf_from_objective,
    ncf_kkt_points as ncf_kkt_points,
    ncf_kkt_residual as ncf_kkt_residual,
    neuron_ncf as neuron_ncf,
    residual_ncf as residual_ncf,
    squared_relu_neuron as squared_relu_neuron,
)
from ._objectives import (
    AbstractObjective as AbstractObjective,
    LogisticLoss as LogisticLoss,
    MatrixCompletion as MatrixCompletion,
    SquareLoss as SquareLoss,
    matrix_cost_gradient_at_zero as matrix_cost_gradient_at_zero,
)
from ._origin import OriginHandoff as OriginHandoff, origin_handoff as origin_handoff
from ._paths import (
    Path as Path,
    escape_path as escape_path,
    escape_scale as escape_scale,
    escape_time as escape_time,
    escape_times as escape_times,
)
from ._relu_escape import (
    ReLUEscape as ReLUEscape,
    layer_sv_ratios as layer_sv_ratios,
    relu_optimal_escape as relu_optimal_escape,
    relu_speed_vs_depth as relu_speed_vs_depth,
)
from ._solution import RESULTS as RESULTS, FlowSolution as FlowSolution
from ._solvers import SOLVER_NAMES as SOLVER_NAMES, KrylovSettings as KrylovSettings
from ._stiff import RODAS3 as RODAS3, RODAS4 as RODAS4, RosenbrockKrylov as RosenbrockKrylov
from ._sweep import SweepResult as SweepResult, sweep as sweep
from ._taylor import (
    TaylorTerm as TaylorTerm,
    euler_error as euler_error,
    h_flow as h_flow,
    homogeneity_error as homogeneity_error,
    lemma13_error as lemma13_error,
    ray_taylor_coefficients as ray_taylor_coefficients,
    remainder_slope as remainder_slope,
    taylor_term as taylor_term,
)
from ._trainable import freeze as freeze
from ._tree import tree_dot as tree_dot, tree_norm as tree_norm

__version__ = "0.1.0"
