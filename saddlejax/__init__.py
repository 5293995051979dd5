"""saddlejax: gradient-flow dynamics of neural networks from small initialization.

Integrate gradient flow as a (stiff) ODE with diffrax, follow it from saddle to saddle, and
compute the theory's objects: homogeneous Taylor terms, escape directions and speeds, escape
paths as fixed points of the contraction map Φ, and the bijection Ψ (Jacot et al.; Kumar & Haupt;
Bantzis, Simon & Jacot; Chen, Luo & Wang). See SPEC.md for the mathematics.

The sub-packages are the architecture: `flow` (gradient flow, descent, events, origin handoff,
sweeps), `solvers` (stiff solvers), `theory` (Taylor terms, escape directions, NCF, paths, Φ,
Ψ), `models` (DLN and ReLU closed forms), `analysis` (trajectory diagnostics), `problems`
(objectives and data), `nn` (networks), `init` (initialisation scales), `experiments` (the
papers' experiments). Everything public is also re-exported here.
"""

from . import (
    analysis as analysis,
    experiments as experiments,
    flow as flow,
    init as init,
    models as models,
    nn as nn,
    problems as problems,
    solvers as solvers,
    theory as theory,
)
from ._results import RESULTS as RESULTS
from .analysis import (
    BijectionCheck as BijectionCheck,
    Plateau as Plateau,
    SimulationComparison as SimulationComparison,
    check_bijection as check_bijection,
    find_plateaus as find_plateaus,
    forward_integration as forward_integration,
    forward_integration_distance as forward_integration_distance,
    numerical_rank as numerical_rank,
    procrustes_rotations as procrustes_rotations,
    rotate_hidden as rotate_hidden,
    simulation_distances as simulation_distances,
)
from .flow import (
    AbstractFlowEvent as AbstractFlowEvent,
    EscapeRadius as EscapeRadius,
    FlowOptions as FlowOptions,
    FlowSolution as FlowSolution,
    LossBelow as LossBelow,
    OriginHandoff as OriginHandoff,
    SweepResult as SweepResult,
    freeze as freeze,
    gradient_descent as gradient_descent,
    gradient_flow as gradient_flow,
    origin_handoff as origin_handoff,
    sweep as sweep,
)
from .models import (
    DLNEscapeDirection as DLNEscapeDirection,
    ReLUEscape as ReLUEscape,
    dln_escape_direction as dln_escape_direction,
    dln_image_init as dln_image_init,
    dln_invariant as dln_invariant,
    dln_optimal_speed as dln_optimal_speed,
    dln_speeds as dln_speeds,
    dln_taylor_term as dln_taylor_term,
    layer_sv_ratios as layer_sv_ratios,
    neuron_invariant as neuron_invariant,
    relu_optimal_escape as relu_optimal_escape,
    relu_speed_vs_depth as relu_speed_vs_depth,
)
from .problems import (
    AbstractObjective as AbstractObjective,
    LogisticLoss as LogisticLoss,
    MatrixCompletion as MatrixCompletion,
    SquareLoss as SquareLoss,
    TrainTest as TrainTest,
    clw_problem as clw_problem,
    diagonal_teacher_problem as diagonal_teacher_problem,
    matrix_completion_problem as matrix_completion_problem,
    matrix_cost_gradient_at_zero as matrix_cost_gradient_at_zero,
    noisy_low_rank_problem as noisy_low_rank_problem,
    random_mask as random_mask,
    squared_relu_toy_problem as squared_relu_toy_problem,
)
from .solvers import (
    RODAS3 as RODAS3,
    RODAS4 as RODAS4,
    AbstractMatrixFreeSolver as AbstractMatrixFreeSolver,
    AutoStiff as AutoStiff,
    RosenbrockKrylov as RosenbrockKrylov,
    RosenbrockTableau as RosenbrockTableau,
)
from .theory import (
    NCF as NCF,
    EscapeDirection as EscapeDirection,
    EscapeDirections as EscapeDirections,
    FixedPointSolution as FixedPointSolution,
    HessianEigenpairs as HessianEigenpairs,
    NCFKKTPoints as NCFKKTPoints,
    Path as Path,
    StrictnessTest as StrictnessTest,
    TaylorTerm as TaylorTerm,
    closeness as closeness,
    contraction_map as contraction_map,
    default_exponent as default_exponent,
    escape_path as escape_path,
    escape_scale as escape_scale,
    escape_speed as escape_speed,
    escape_time as escape_time,
    escape_times as escape_times,
    euler_error as euler_error,
    fit_closeness_rate as fit_closeness_rate,
    fit_escape_speed as fit_escape_speed,
    fixed_point_iteration as fixed_point_iteration,
    h_flow as h_flow,
    hessian_negative_eigenpairs as hessian_negative_eigenpairs,
    homogeneity_error as homogeneity_error,
    integrate_path as integrate_path,
    kkt_residual as kkt_residual,
    lemma13_error as lemma13_error,
    ncf as ncf,
    ncf_from_objective as ncf_from_objective,
    ncf_kkt_points as ncf_kkt_points,
    ncf_kkt_residual as ncf_kkt_residual,
    neuron_ncf as neuron_ncf,
    ode_residual as ode_residual,
    optimal_escape as optimal_escape,
    path_distance as path_distance,
    psi as psi,
    psi_inverse as psi_inverse,
    ray_taylor_coefficients as ray_taylor_coefficients,
    refine_escape_direction as refine_escape_direction,
    remainder_slope as remainder_slope,
    residual_ncf as residual_ncf,
    speed_threshold as speed_threshold,
    squared_relu_neuron as squared_relu_neuron,
    strictness_test as strictness_test,
    taylor_term as taylor_term,
    theory_closeness_rate as theory_closeness_rate,
    time_derivative as time_derivative,
    weighted_norm as weighted_norm,
)

__version__ = "0.1.0"
