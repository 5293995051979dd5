"""Objectives (losses of a model) and the papers' problems, built from explicit keys."""

from ._data import (
    TrainTest as TrainTest,
    clw_problem as clw_problem,
    diagonal_teacher_problem as diagonal_teacher_problem,
    matrix_completion_problem as matrix_completion_problem,
    noisy_low_rank_problem as noisy_low_rank_problem,
    random_mask as random_mask,
    squared_relu_toy_problem as squared_relu_toy_problem,
)
from ._objectives import (
    AbstractObjective as AbstractObjective,
    LogisticLoss as LogisticLoss,
    MatrixCompletion as MatrixCompletion,
    SquareLoss as SquareLoss,
    matrix_cost_gradient_at_zero as matrix_cost_gradient_at_zero,
)
