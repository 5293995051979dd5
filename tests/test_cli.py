"""The CLI as a new user runs it: `python -m saddlejax ...` in a fresh process, JSON checked
against the theory (SPEC §5, §7)."""

import json
import os
import subprocess
import sys

import pytest


def _run(*args, timeout=600, cwd=None):
    proc = subprocess.run(
        [sys.executable, "-m", "saddlejax", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_help_lists_every_command():
    """`saddlejax --help` works and lists every sub-command."""
    out = _run("--help")
    for name in ("run", "reproduce", "escape", "escape-path", "bench"):
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


def test_escape_rejects_unknown_config_key(tmp_path):
    """A --config file with a key that is not a setting exits 2 with a message naming it (no
    traceback, no computation)."""
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"model": "dln", "widht": 3}))
    proc = subprocess.run(
        [sys.executable, "-m", "saddlejax", "escape", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "widht" in proc.stderr and "Traceback" not in proc.stderr


def test_escape_path_writes_no_figure_by_default():
    """`escape-path` draws a figure only when --png names a file (never into the current
    folder by default); `--png ''` also means none."""
    from saddlejax.cli._main import build_parser

    parser = build_parser()
    assert parser.parse_args(["escape-path"]).png is None
    assert parser.parse_args(["escape-path", "--png", ""]).png is None


@pytest.mark.parametrize("preset", ["dln2"])
def test_escape_path_json_checks(preset, tmp_path):
    """`saddlejax escape-path --json` reports a contracting iteration, a round trip at roundoff,
    a closeness rate within 1 % of (m − 1)s (= 3s for a DLN with L = 2), the speed preserved,
    agreement with forward integration, and a distance to the simulation that falls with α; the
    figure goes exactly where --png says, creating its folder."""
    pytest.importorskip("matplotlib")
    stdout = _run(
        "escape-path", "--preset", preset, "--json", "--png", "figs/path.png", cwd=tmp_path
    )
    out = json.loads(stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figs"]
    assert (tmp_path / "figs" / "path.png").stat().st_size > 0
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
        "from saddlejax.cli import use_host_devices; use_host_devices(3); import jax; "
        "n = len(jax.devices('cpu')); use_host_devices(5); assert len(jax.devices('cpu')) == n; "
        "print(n)"
    )
    env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip()) == expected


@pytest.mark.parametrize("setting", ["folder", "off"])
def test_cli_compilation_cache(tmp_path, setting):
    """The CLI keeps compiled code in $SADDLEJAX_CACHE_DIR (a compilation slower than 0.1 s is
    written there), and "off" keeps none."""
    folder = tmp_path / "cache"
    code = (
        "from saddlejax.cli import use_compilation_cache; import jax, jax.numpy as jnp\n"
        "used = use_compilation_cache()\n"
        "f = jax.jit(lambda x: sum(jnp.sin(x * i).sum() for i in range(400)))\n"
        "f(jnp.ones(3)).block_until_ready(); print(used)\n"
    )
    env = dict(os.environ, SADDLEJAX_CACHE_DIR=str(folder) if setting == "folder" else "off")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if setting == "off":
        assert proc.stdout.strip() == "None" and not folder.exists()
    else:
        assert proc.stdout.strip() == str(folder)
        assert any("jit_" in p.name for p in folder.iterdir())


def test_solves_are_kept_in_the_compilation_cache(tmp_path):
    """A gradient flow (default solver) and a sweep are written to JAX's persistent cache, which
    refuses programs holding host callbacks (diffrax's argument checks, traced as NaN
    substitution by saddlejax), and a failing solve is still reported as one."""
    folder = tmp_path / "cache"
    code = (
        "import jax, jax.random as jr, saddlejax\n"
        "from saddlejax.cli import use_compilation_cache\n"
        "jax.config.update('jax_enable_x64', True); use_compilation_cache()\n"
        "problem = saddlejax.matrix_completion_problem(jr.key(0), n=3, rank=1)\n"
        "net = saddlejax.init.scale(saddlejax.nn.DeepLinear((3, 4, 3), key=jr.key(1)), 0.1)\n"
        "saddlejax.gradient_flow(problem, net, 5.0, n_save=8)\n"
        "bad = saddlejax.gradient_flow(problem, net, 5.0, n_save=8, max_steps=2, throw=False)\n"
        "print(bad.result == saddlejax.RESULTS.max_steps_reached)\n"
    )
    env = dict(os.environ, SADDLEJAX_CACHE_DIR=str(folder), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"
    # Without the NaN substitution JAX logs "not caching" and writes no solve_flow entry.
    assert any(p.name.startswith("jit_solve_flow") for p in folder.iterdir()), sorted(
        p.name for p in folder.iterdir()
    )


def test_runs_without_matplotlib(tmp_path):
    """matplotlib is the `plot` extra: with it absent, saddlejax and its CLI import, the parser
    builds, `escape-path --png` stops at once (exit 2) naming the extra, and drawing raises an
    ImportError that says how to install it."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import saddlejax\n"
        "from saddlejax.cli import main\n"
        "rc = main(['escape-path', '--png', 'fig.png'])\n"
        "assert rc == 2, rc\n"
        "try:\n"
        "    saddlejax.experiments.figure()\n"
        "except ImportError as e:\n"
        "    assert 'saddlejax[plot]' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('figure() without matplotlib')\n"
        "assert not any(m.startswith('matplotlib.') for m in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "saddlejax[plot]" in proc.stderr
    assert not (tmp_path / "fig.png").exists()
