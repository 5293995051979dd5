"""ODE solvers for the stiff gradient flow: Rosenbrock–Krylov methods, the automatic
explicit/implicit switch, and their Krylov building blocks (diffrax has no Rosenbrock method,
and its implicit solvers' default root finder builds a dense Jacobian)."""

from ._auto import AutoStiff as AutoStiff
from ._base import (
    AbstractMatrixFreeSolver as AbstractMatrixFreeSolver,
    evals_per_step as evals_per_step,
)
from ._krylov import (
    conjugate_gradient as conjugate_gradient,
    power_iteration_step as power_iteration_step,
    power_start as power_start,
    track_subspace as track_subspace,
)
from ._names import (
    SOLVER_NAMES as SOLVER_NAMES,
    newton_krylov as newton_krylov,
    solver_from_name as solver_from_name,
)
from ._rosenbrock import (
    RODAS3 as RODAS3,
    RODAS4 as RODAS4,
    RODAS5P as RODAS5P,
    RosenbrockKrylov as RosenbrockKrylov,
    RosenbrockTableau as RosenbrockTableau,
)
