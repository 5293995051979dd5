"""What an experiment returns and how a run folder records it.

An experiment returns an `Outcome`: labelled arrays (each with its dimension names, e.g.
("alpha", "seed", "time")), the scalar values its claims are about, the `Check`s of those claims
and its figures. `write_run` turns it into a run folder:

- `config.yaml`: the resolved config (every field, the experiment's name), loadable by
  `saddlejax run config.yaml`;
- `environment.json`: saddlejax, Python, jax, jaxlib, diffrax, equinox, optax versions, the
  devices and the precision;
- `results.npz` with `schema.json`: one array per name, and in the schema its dimensions,
  shape, dtype and meaning (npz holds no labels, so the schema does; `load_results` pairs them);
- `summary.json`: the values, the checks (quantity, measured, expected, tolerance, pass) and the
  wall time; written last, so that its presence marks a finished run;
- the figures, as PNG (with matplotlib, the `plot` extra).
"""

import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

FINISHED = "summary.json"


@dataclasses.dataclass(frozen=True)
class Check:
    """One claim of a paper against the measurement: `passed` when `measured` agrees with
    `expected` within `tolerance` (in the sense `kind` says), with `note` for what the
    tolerance stands for."""

    quantity: str
    measured: float | int | str | bool | list
    expected: float | int | str | bool | list
    tolerance: float | str | None
    passed: bool
    note: str = ""

    def line(self) -> str:
        mark = "pass" if self.passed else "FAIL"
        tol = "" if self.tolerance is None else f" ± {_fmt(self.tolerance)}"
        expected = f"{_fmt(self.expected)}{tol}"
        return f"[{mark}] {self.quantity}: {_fmt(self.measured)} (expected {expected})"


def _fmt(x) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return str(x)


def _number(x):
    """A JSON-friendly Python number or list of them."""
    a = np.asarray(x)
    if a.ndim:
        return [_number(v) for v in a]
    v = a.item()
    return float(v) if isinstance(v, float) else v


def check_close(quantity: str, measured, expected, rtol: float, note: str = "") -> Check:
    """|measured − expected| ≤ rtol·|expected| (elementwise, all must hold)."""
    m, e = np.asarray(measured, float), np.asarray(expected, float)
    ok = bool(np.all(np.isfinite(m)) and np.all(np.abs(m - e) <= rtol * np.abs(e)))
    return Check(quantity, _number(m), _number(e), f"rel {rtol:g}", ok, note)


def check_abs(quantity: str, measured, expected, atol: float, note: str = "") -> Check:
    """|measured − expected| ≤ atol (elementwise, all must hold)."""
    m, e = np.asarray(measured, float), np.asarray(expected, float)
    ok = bool(np.all(np.isfinite(m)) and np.all(np.abs(m - e) <= atol))
    return Check(quantity, _number(m), _number(e), atol, ok, note)


def check_at_most(quantity: str, measured, bound, note: str = "") -> Check:
    """measured ≤ bound (elementwise)."""
    m = np.asarray(measured, float)
    ok = bool(np.all(np.isfinite(m)) and np.all(m <= bound))
    return Check(quantity, _number(m), f"≤ {bound:g}", None, ok, note)


def check_at_least(quantity: str, measured, bound, note: str = "") -> Check:
    """measured ≥ bound (elementwise)."""
    m = np.asarray(measured, float)
    ok = bool(np.all(np.isfinite(m)) and np.all(m >= bound))
    return Check(quantity, _number(m), f"≥ {bound:g}", None, ok, note)


def check_equal(quantity: str, measured, expected, note: str = "") -> Check:
    """measured == expected exactly (integers, strings, booleans; elementwise)."""
    ok = bool(np.all(np.asarray(measured) == np.asarray(expected)))
    return Check(quantity, _number(measured), _number(expected), None, ok, note)


@dataclasses.dataclass(frozen=True)
class Array:
    """A labelled array: `values` with one name per axis in `dims`, and what it is."""

    dims: tuple[str, ...]
    values: np.ndarray
    doc: str = ""

    def __post_init__(self):
        values = np.asarray(self.values)
        object.__setattr__(self, "values", values)
        if values.ndim != len(self.dims):
            raise ValueError(
                f"an array of shape {values.shape} needs {values.ndim} dimension names, got "
                f"{self.dims}"
            )


@dataclasses.dataclass
class Outcome:
    """What an experiment returns: `arrays` (name → `Array`), `values` (name → JSON value, the
    numbers the claims are about), `checks`, `figures` (file name → function drawing into a
    matplotlib `Figure` it is given, from this outcome), `table` (text printed after the run)
    `failures` (text lines, one per failed solve; a run with failures exits with 1) and
    `warnings` (settings that made a result meaningless, e.g. an escape radius never reached).
    `figures_skipped` is set when the run folder is written without matplotlib."""

    arrays: dict[str, Array] = dataclasses.field(default_factory=dict)
    values: dict = dataclasses.field(default_factory=dict)
    checks: list[Check] = dataclasses.field(default_factory=list)
    figures: dict[str, Callable] = dataclasses.field(default_factory=dict)
    table: str = ""
    failures: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    figures_skipped: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def environment() -> dict:
    """The versions and devices a run was computed with."""
    import importlib.metadata as md

    import jax

    versions = {}
    for name in ("saddlejax", "jax", "jaxlib", "diffrax", "equinox", "optax", "lineax", "numpy"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions,
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "n_devices": len(devices),
        "n_processes": jax.process_count(),
        "precision": "float64" if jax.config.jax_enable_x64 else "float32",
        "cpu_count": os.cpu_count(),
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def finished_config(folder: str | Path) -> dict | None:
    """The resolved config of the finished run in `folder`, or None when it holds none."""
    folder = Path(folder)
    if not (folder / FINISHED).is_file():
        return None
    try:
        return json.loads((folder / FINISHED).read_text())["config"]
    except (ValueError, KeyError, OSError):
        return None  # a damaged summary: the run is redone


def write_run(
    folder: str | Path,
    experiment: str,
    config: Mapping,
    config_yaml: str,
    outcome: Outcome,
    wall_time: float,
) -> list[Path]:
    """Write the run folder described in this module's docstring; return the paths written.
    A figure that cannot be drawn (no matplotlib) is skipped with a note in `summary.json`,
    never at the cost of the numbers."""
    from ._plot import figure, has_matplotlib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FINISHED).unlink(missing_ok=True)
    paths = []
    _write_atomic(folder / "config.yaml", config_yaml)
    _write_atomic(folder / "environment.json", json.dumps(environment(), indent=2))
    paths += [folder / "config.yaml", folder / "environment.json"]
    if outcome.arrays:
        tmp = folder / "results.tmp.npz"
        np.savez_compressed(tmp, **{k: a.values for k, a in outcome.arrays.items()})
        os.replace(tmp, folder / "results.npz")
        schema = {
            k: {
                "dims": list(a.dims),
                "shape": list(a.values.shape),
                "dtype": str(a.values.dtype),
                "doc": a.doc,
            }
            for k, a in outcome.arrays.items()
        }
        _write_atomic(folder / "schema.json", json.dumps(schema, indent=2))
        paths += [folder / "results.npz", folder / "schema.json"]
    figures, skipped = [], []
    for name, draw in outcome.figures.items():
        if not has_matplotlib():
            skipped.append(name)
            continue
        fig = figure(layout="constrained")
        draw(fig)
        fig.savefig(folder / name, dpi=110)
        figures.append(name)
        paths.append(folder / name)
    outcome.figures_skipped = skipped
    summary = {
        "experiment": experiment,
        "passed": outcome.passed,
        "checks": [dataclasses.asdict(c) for c in outcome.checks],
        "values": outcome.values,
        "failures": outcome.failures,
        "warnings": outcome.warnings,
        "figures": figures,
        "figures_skipped": skipped,
        "wall_time": wall_time,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": dict(config),
    }
    _write_atomic(folder / FINISHED, json.dumps(summary, indent=2, default=_json_default))
    paths.append(folder / FINISHED)
    return paths


def _json_default(x):
    if isinstance(x, (np.generic, np.ndarray)):
        return _number(x)
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return str(x)


def load_results(folder: str | Path) -> dict[str, Array]:
    """The labelled arrays of the run in `folder` (`results.npz` with `schema.json`)."""
    folder = Path(folder)
    schema = json.loads((folder / "schema.json").read_text())
    with np.load(folder / "results.npz") as data:
        return {k: Array(tuple(s["dims"]), data[k], s.get("doc", "")) for k, s in schema.items()}


def checks_table(checks: Sequence[Check]) -> str:
    """The checks, one line each."""
    return "\n".join(c.line() for c in checks)
