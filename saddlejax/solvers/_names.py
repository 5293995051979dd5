"""Solvers by name, for the command line and experiment configs (the Python API takes solver
objects): explicit Runge–Kutta, diffrax's implicit Kvaerno methods with a matrix-free
Newton–Krylov root finder, the Rosenbrock–Krylov methods and the automatic switch."""

import diffrax
import lineax as lx
import optimistix as optx

from .._validate import did_you_mean
from ._auto import AutoStiff
from ._rosenbrock import RODAS3, RODAS4, RODAS5P, RosenbrockKrylov


def newton_krylov(
    *, gmres_rtol: float = 1e-4, gmres_atol: float = 1e-12, restart: int = 20, max_steps=200
):
    """A Newton root finder for diffrax's implicit solvers whose linear systems are solved by
    GMRES on Hessian-vector products (never a dense P×P Jacobian), with the step-size
    controller's tolerances (`diffrax.with_stepsize_controller_tols`).

    diffrax's default `VeryChord` materialises the Jacobian; `VeryChord` or `optx.Chord` with
    a Krylov solver fail in diffrax 0.7.2 / lineax 0.1.1, Newton + GMRES works.

    **Example:** `diffrax.Kvaerno5(root_finder=saddlejax.solvers.newton_krylov())`.
    """
    linear_solver = lx.GMRES(rtol=gmres_rtol, atol=gmres_atol, restart=restart, max_steps=max_steps)
    return diffrax.with_stepsize_controller_tols(optx.Newton)(linear_solver=linear_solver)


_NAMED = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "dopri8": diffrax.Dopri8,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
    "kvaerno3": lambda: diffrax.Kvaerno3(root_finder=newton_krylov()),
    "kvaerno4": lambda: diffrax.Kvaerno4(root_finder=newton_krylov()),
    "kvaerno5": lambda: diffrax.Kvaerno5(root_finder=newton_krylov()),
    "rodas3": lambda: RosenbrockKrylov(tableau=RODAS3),
    "rodas4": lambda: RosenbrockKrylov(tableau=RODAS4),
    "rodas5p": lambda: RosenbrockKrylov(tableau=RODAS5P),
    "auto": AutoStiff,
}
SOLVER_NAMES = tuple(_NAMED)


def solver_from_name(name: str) -> diffrax.AbstractSolver:
    """The solver called `name` (one of `SOLVER_NAMES`), with its default settings."""
    try:
        return _NAMED[name.lower()]()
    except (KeyError, AttributeError):
        hint = did_you_mean(str(name).lower(), SOLVER_NAMES)
        raise ValueError(
            f"unknown solver name {name!r}; {hint}use one of {', '.join(SOLVER_NAMES)}."
        )
