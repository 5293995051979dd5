"""Gradient flow and its discretisations: the flow (diffrax), the sliding (Filippov) flow of
nets with ReLU kinks, gradient descent, events, the Lemma 13 origin handoff, sweeps over
α × seeds with checkpoints."""

from .._trainable import freeze as freeze
from ._checkpoint import CheckpointMismatch as CheckpointMismatch
from ._descent import gradient_descent as gradient_descent
from ._events import (
    AbstractFlowEvent as AbstractFlowEvent,
    CriticalPoint as CriticalPoint,
    EscapeRadius as EscapeRadius,
    LossBelow as LossBelow,
)
from ._flow import continue_flow as continue_flow, gradient_flow as gradient_flow
from ._options import FlowOptions as FlowOptions, default_save_times as default_save_times
from ._origin import OriginHandoff as OriginHandoff, origin_handoff as origin_handoff
from ._sliding import sliding_flow as sliding_flow
from ._solution import FlowSolution as FlowSolution
from ._sweep import SweepResult as SweepResult, sweep as sweep
