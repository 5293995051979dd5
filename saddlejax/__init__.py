"""saddlejax: gradient-flow dynamics of neural networks from small initialization.

Integrate gradient flow as a (stiff) ODE with diffrax, follow it from saddle to saddle, and
compute the theory's objects: homogeneous Taylor terms, escape directions and speeds, escape
paths as fixed points of the contraction map Φ, and the bijection Ψ (Jacot et al.; Kumar & Haupt;
Chen, Luo & Wang). See SPEC.md for the mathematics.
"""

from . import init as init, nn as nn
from ._data import (
    clw_problem as clw_problem,
    diagonal_teacher_problem as diagonal_teacher_problem,
    matrix_completion_problem as matrix_completion_problem,
    noisy_low_rank_problem as noisy_low_rank_problem,
    random_mask as random_mask,
    squared_relu_toy_problem as squared_relu_toy_problem,
    TrainTest as TrainTest,
)
from ._descent import gradient_descent as gradient_descent
from ._events import (
    AbstractFlowEvent as AbstractFlowEvent,
    EscapeRadius as EscapeRadius,
    LossBelow as LossBelow,
)
from ._flow import gradient_flow as gradient_flow, raise_if_failed as raise_if_failed
from ._objectives import (
    AbstractObjective as AbstractObjective,
    LogisticLoss as LogisticLoss,
    matrix_cost_gradient_at_zero as matrix_cost_gradient_at_zero,
    MatrixCompletion as MatrixCompletion,
    SquareLoss as SquareLoss,
)
from ._solution import FlowSolution as FlowSolution, RESULTS as RESULTS
from ._solvers import KrylovSettings as KrylovSettings, SOLVER_NAMES as SOLVER_NAMES
from ._sweep import sweep as sweep, SweepResult as SweepResult
from ._trainable import freeze as freeze
from ._tree import tree_dot as tree_dot, tree_norm as tree_norm

# --- Taylor terms and escape directions (issue 3) ---

# --- escape paths, Φ and Ψ (issue 4) ---

__version__ = "0.1.0"
