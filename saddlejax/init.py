"""Initialisation scales (SPEC §1): `saddlejax.init.scale(model, alpha)` and conversions."""

from ._init_scale import (
    alpha_from_clw as alpha_from_clw,
    alpha_from_gamma as alpha_from_gamma,
    alpha_from_std as alpha_from_std,
    clw_std as clw_std,
    entry_std as entry_std,
    gamma_from_alpha as gamma_from_alpha,
    gamma_std as gamma_std,
    scale as scale,
)
