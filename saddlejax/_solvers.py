"""Named ODE-solver strategies for gradient flow: explicit Runge–Kutta and matrix-free implicit.

The gradient flow dθ/dt = −∇L(θ) is stiff on plateaus (λ_max(∇²L) ≈ 10 while the plateau lasts
α^{−(L−2)}; PERF-NOTES). Explicit solvers are cheap per step but their step is capped near
2/λ_max; implicit solvers step across the plateau but solve (I + hγ∇²L)δ = r at every stage.
Their Newton systems are solved matrix-free: optimistix Newton with a lineax Krylov solver, whose
operator is the Jacobian of the residual applied through `jax.jvp` (Hessian-vector products) —
never a dense P×P matrix. (diffrax's default VeryChord materialises the Jacobian, and VeryChord or
optx.Chord with a Krylov solver fail in diffrax 0.7.2 / lineax 0.1.1; Newton + GMRES works.)
"""

import diffrax
import equinox as eqx
import lineax as lx
import optimistix as optx

from ._auto import AutoStiff
from ._stiff import TABLEAUS, RosenbrockKrylov

_EXPLICIT = {
    "tsit5": (diffrax.Tsit5, 6),
    "dopri5": (diffrax.Dopri5, 6),
    "dopri8": (diffrax.Dopri8, 12),
    "bosh3": (diffrax.Bosh3, 3),
    "heun": (diffrax.Heun, 2),
}
_IMPLICIT = {
    "kvaerno3": diffrax.Kvaerno3,
    "kvaerno4": diffrax.Kvaerno4,
    "kvaerno5": diffrax.Kvaerno5,
}
# Rosenbrock methods with conjugate-gradient stage solves on Hessian-vector products
# (saddlejax/_stiff.py): linearly implicit, one symmetric solve per stage.
_ROSENBROCK = {"rodas3": "rodas3", "rodas4": "rodas4"}
_ALIASES = {"explicit": "tsit5", "stiff": "kvaerno5", "implicit": "kvaerno5"}
SOLVER_NAMES = tuple(
    sorted(_EXPLICIT) + sorted(_IMPLICIT) + sorted(_ROSENBROCK) + ["auto"] + sorted(_ALIASES)
)


class KrylovSettings(eqx.Module):
    """Settings of the matrix-free Newton–Krylov solve inside implicit solvers.

    **Arguments:**

    - `krylov_rtol`, `krylov_atol`: GMRES tolerances on the linear residual (relative to the
        right-hand side). The Newton iteration corrects a loose linear solve (inexact Newton).
    - `restart`, `max_krylov_steps`: GMRES restart length and iteration cap.
    - `newton_rtol_factor`: Newton's tolerances are this factor times the step-size
        controller's (rtol, atol): the nonlinear solve need only be more accurate than the local
        error the controller accepts. For the Rosenbrock solvers ("rodas3", "rodas4", "auto")
        it is the conjugate-gradient residual tolerance in units of atol + rtol·|θ|; keep it
        ≤ 0.1 (at 0.5 the stage errors spoil the error estimate and the steps collapse).
    - `deflate`: Rosenbrock/auto only: dimension of the tracked top eigenspace of ∇²L used to
        deflate CG (0: none). Default 16: on the default problem ∇²L has 12 eigenvalues in
        200–8,000 on the plateaus and a gap below; deflating them cuts Hessian-vector products
        3.8× at α = 1e−3 (benchmarks/README.md). Costs 16 vectors of size P of memory.
    - `recycle`: Rosenbrock/auto only: CG directions of each step's first stage reused to start
        the later stages (0: none; default 16; 2·16 vectors of size P).
    """

    krylov_rtol: float = 1e-4
    krylov_atol: float = 1e-12
    restart: int = eqx.field(static=True, default=20)
    max_krylov_steps: int | None = eqx.field(static=True, default=200)
    newton_rtol_factor: float = 0.1
    deflate: int = eqx.field(static=True, default=16)
    recycle: int = eqx.field(static=True, default=16)


def check_solver(solver) -> None:
    """Raise a ValueError for an unknown solver name or a non-solver object."""
    if isinstance(solver, diffrax.AbstractSolver):
        return
    if isinstance(solver, str) and solver.lower() in SOLVER_NAMES:
        return
    raise ValueError(
        f"unknown `solver` {solver!r}; use one of {SOLVER_NAMES} or a `diffrax.AbstractSolver` "
        "instance (e.g. `diffrax.Tsit5()`)."
    )


def is_implicit(solver) -> bool:
    """Whether `solver` solves linear or nonlinear systems in ∇²L (implicit or Rosenbrock)."""
    if isinstance(solver, str):
        name = _ALIASES.get(solver.lower(), solver.lower())
        return name in _IMPLICIT or name in _ROSENBROCK or name == "auto"
    return isinstance(solver, diffrax.AbstractImplicitSolver | RosenbrockKrylov | AutoStiff)


def make_solver(solver, rtol, atol, krylov: KrylovSettings | None = None):
    """Build the diffrax solver for a name (inside jit: `rtol`, `atol` may be traced).

    **Returns:** (solver, gradient evaluations per step or −1 where not known a priori).
    """
    check_solver(solver)
    if isinstance(solver, AutoStiff | RosenbrockKrylov):
        # An instance passed to tune it: the flow's tolerances unless it sets its own.
        if solver.rtol is None or solver.atol is None:
            solver = eqx.tree_at(
                lambda s: (s.rtol, s.atol),
                solver,
                (
                    rtol if solver.rtol is None else solver.rtol,
                    atol if solver.atol is None else solver.atol,
                ),
                is_leaf=lambda x: x is None,
            )
        if isinstance(solver, RosenbrockKrylov):
            return solver, RosenbrockKrylov.grad_evals_per_step(solver.tableau)
        return solver, -1
    if isinstance(solver, diffrax.AbstractSolver):
        for cls, per_step in _EXPLICIT.values():
            if type(solver) is cls:
                return solver, per_step
        return solver, -1
    name = _ALIASES.get(solver.lower(), solver.lower())
    if name in _EXPLICIT:
        cls, per_step = _EXPLICIT[name]
        return cls(), per_step
    krylov = KrylovSettings() if krylov is None else krylov
    if name == "auto":
        auto = AutoStiff(
            rtol=rtol,
            atol=atol,
            deflate=krylov.deflate,
            recycle=krylov.recycle,
            linear_factor=krylov.newton_rtol_factor,
            max_cg_steps=200 if krylov.max_krylov_steps is None else krylov.max_krylov_steps,
        )
        return auto, -1
    if name in _ROSENBROCK:
        tableau = TABLEAUS[name]
        rosenbrock = RosenbrockKrylov(
            rtol=rtol,
            atol=atol,
            tableau=tableau,
            deflate=krylov.deflate,
            recycle=krylov.recycle,
            linear_factor=krylov.newton_rtol_factor,
            max_cg_steps=200 if krylov.max_krylov_steps is None else krylov.max_krylov_steps,
        )
        return rosenbrock, RosenbrockKrylov.grad_evals_per_step(tableau)
    linear_solver = lx.GMRES(
        rtol=krylov.krylov_rtol,
        atol=krylov.krylov_atol,
        restart=krylov.restart,
        max_steps=krylov.max_krylov_steps,
    )
    root_finder = optx.Newton(
        rtol=krylov.newton_rtol_factor * rtol,
        atol=krylov.newton_rtol_factor * atol,
        linear_solver=linear_solver,
    )
    return _IMPLICIT[name](root_finder=root_finder), -1
