"""The CLI as a new user runs it: `python -m saddlejax ...` in a fresh process, JSON checked
against the theory (SPEC §5, §7)."""

import json
import os
import subprocess
import sys

import pytest


def _run(*args, timeout=600):
    proc = subprocess.run(
        [sys.executable, "-m", "saddlejax", *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_help_lists_every_command():
    """`saddlejax --help` works and lists every sub-command."""
    out = _run("--help")
    for name in ("run", "escape", "escape-path", "bench"):
        assert name in out


def test_unknown_command_is_an_error():
    """An unknown sub-command exits non-zero with argparse's message naming the choices."""
    proc = subprocess.run(
        [sys.executable, "-m", "saddlejax", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "invalid choice" in proc.stderr


def test_escape_json_matches_closed_form():
    """`saddlejax escape --preset dln2 --json`: k = 2, m = 4 at the origin of a 2-layer DLN and
    s* equal to the closed form σ₁(G) (L = 2) to 1e−8 relative, with a tiny KKT residual."""
    out = json.loads(_run("escape", "--preset", "dln2", "--json").strip().splitlines()[-1])
    assert (out["k"], out["m"]) == (2, 4)
    assert out["s_star_rel_diff"] < 1e-8
    assert out["kkt_residual"] < 1e-10 * out["s_star"]


@pytest.mark.parametrize("preset", ["dln2"])
def test_escape_path_json_checks(preset):
    """`saddlejax escape-path --json` reports a contracting iteration, a round trip at roundoff,
    a closeness rate within 1 % of (m − 1)s (= 3s for a DLN with L = 2), the speed preserved,
    agreement with forward integration, and a distance to the simulation that falls with α."""
    stdout = _run("escape-path", "--preset", preset, "--json", "--png", "")
    out = json.loads(stdout.strip().splitlines()[-1])
    for key in ("order", "next_order", "speed", "contraction_ratios", "ode_residual",
                "round_trip_error", "fitted_rate", "theory_rate", "forward_integration_distance",
                "simulation_distance"):
        assert key in out
    assert (out["order"], out["next_order"]) == (2, 4)
    assert max(out["contraction_ratios"]) < 1.0
    assert out["round_trip_error"] < 1e-9
    assert abs(out["fitted_rate"] / out["theory_rate"] - 1) < 0.01
    assert abs(out["theory_rate"] - 3 * out["speed"]) < 1e-12 * out["theory_rate"]
    assert out["forward_integration_distance"] < 1e-6
    dist = out["simulation_distance"]
    assert all(b < a for a, b in zip(dist, dist[1:]))


@pytest.mark.parametrize(
    "xla_flags, expected",
    [("", 3), ("--xla_force_host_platform_device_count=2", 2)],
)
def test_cli_exposes_host_devices(xla_flags, expected):
    """The CLI gives JAX one host device per core (here 3, as asked) so that `sweep` spreads a
    CPU run's seeds over them, unless XLA_FLAGS already set the number; called after JAX has
    started it changes nothing instead of failing."""
    code = (
        "from saddlejax._cli import use_host_devices; use_host_devices(3); import jax; "
        "n = len(jax.devices('cpu')); use_host_devices(5); assert len(jax.devices('cpu')) == n; "
        "print(n)"
    )
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) == expected
