"""The theory's objects as pure functions: homogeneous Taylor terms and the H-flow, escape
directions and speeds on the sphere and the curvature there, the neural correlation function,
escape paths, the contraction map Φ and the bijection Ψ (Jacot et al., Kumar & Haupt;
SPEC §4–§7). Escape speeds and directions and the fixed points of Φ are differentiable in the
data by the implicit function theorem."""

from ._bijection import (
    closeness as closeness,
    fit_closeness_rate as fit_closeness_rate,
    fit_escape_speed as fit_escape_speed,
    path_distance as path_distance,
    psi as psi,
    psi_inverse as psi_inverse,
    speed_threshold as speed_threshold,
    theory_closeness_rate as theory_closeness_rate,
)
from ._contraction import (
    FixedPointSolution as FixedPointSolution,
    contraction_map as contraction_map,
    default_exponent as default_exponent,
    fixed_point_iteration as fixed_point_iteration,
    integrate_path as integrate_path,
    ode_residual as ode_residual,
    time_derivative as time_derivative,
    weighted_norm as weighted_norm,
)
from ._curvature import (
    HessianEigenpairs as HessianEigenpairs,
    StrictnessTest as StrictnessTest,
    hessian_negative_eigenpairs as hessian_negative_eigenpairs,
    strictness_test as strictness_test,
)
from ._escape import (
    EscapeDirection as EscapeDirection,
    EscapeDirections as EscapeDirections,
    escape_speed as escape_speed,
    kkt_residual as kkt_residual,
    optimal_escape as optimal_escape,
    refine_escape_direction as refine_escape_direction,
)
from ._h_flow import (
    BlowupTime as BlowupTime,
    blowup_time as blowup_time,
    h_flow as h_flow,
    lemma13_error as lemma13_error,
)
from ._implicit import NeumannSeries as NeumannSeries
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
from ._paths import (
    Path as Path,
    escape_path as escape_path,
    escape_scale as escape_scale,
    escape_time as escape_time,
    escape_times as escape_times,
)
from ._taylor import (
    TaylorTerm as TaylorTerm,
    euler_error as euler_error,
    homogeneity_error as homogeneity_error,
    ray_taylor_coefficients as ray_taylor_coefficients,
    remainder_slope as remainder_slope,
    taylor_term as taylor_term,
)
