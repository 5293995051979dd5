"""Networks as Equinox modules, written for a single example (batch them with `jax.vmap`)."""

from ._deep_linear import DeepLinear as DeepLinear, end_to_end_matrix as end_to_end_matrix
from ._deep_relu import DeepReLU as DeepReLU
from ._kink_surfaces import kink_values as kink_values, on_piece as on_piece
from ._kinks import leaky_relu as leaky_relu, relu as relu
from ._smoothing import with_smoothing as with_smoothing
from ._squared_relu import SquaredReLU as SquaredReLU
from ._two_layer import TwoLayer as TwoLayer
