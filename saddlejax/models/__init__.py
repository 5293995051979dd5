"""Closed forms and measurements for specific architectures: deep linear networks (escape
directions and speeds from the SVD, Jacot et al. §4.2), deep ReLU networks (Bantzis, Simon &
Jacot), and the invariants of network symmetries used to deduplicate escape directions."""

from ._dln import (
    DLNEscapeDirection as DLNEscapeDirection,
    dln_escape_direction as dln_escape_direction,
    dln_image_init as dln_image_init,
    dln_optimal_speed as dln_optimal_speed,
    dln_speeds as dln_speeds,
    dln_taylor_term as dln_taylor_term,
)
from ._invariants import (
    dln_invariant as dln_invariant,
    neuron_invariant as neuron_invariant,
)
from ._relu import (
    ReLUEscape as ReLUEscape,
    layer_sv_ratios as layer_sv_ratios,
    relu_optimal_escape as relu_optimal_escape,
    relu_speed_vs_depth as relu_speed_vs_depth,
)
from ._symmetries import (
    balanced_dln as balanced_dln,
    include_dln as include_dln,
    permute_neurons as permute_neurons,
    random_balanced_dln as random_balanced_dln,
    random_rotations as random_rotations,
    rotate_hidden as rotate_hidden,
)
