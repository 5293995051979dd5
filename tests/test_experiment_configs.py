"""Experiments as configs: presets and config files resolve and validate before any work,
overrides and grids follow Hydra's grammar, a run folder records what was computed (resolved
config, environment, labelled arrays, checks, figures), a finished run is skipped and one of
other settings refused, and an interrupted run keeps its finished chunks."""

import dataclasses
import functools
import json

import numpy as np
import pytest
from _cli_run import run_cli
from omegaconf import OmegaConf

import saddlejax as sj
import saddlejax.experiments as ex
from saddlejax.experiments._config import EXPERIMENTS, load_experiments
from saddlejax.experiments._record import finished_config


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    """A cheap experiment: the flow of L(θ) = ½‖θ − 1‖² from θ₀ = α·1 (closed form
    θ(t) = 1 + (α − 1)e^{−t})."""

    alphas: tuple[float, ...] = (0.1, 0.01)
    seeds: tuple[int, ...] = (0, 1)
    size: int = 3
    t1: float = 2.0
    crash: bool = False

    def __post_init__(self):
        ex._checks.check_int("size", self.size, 1, 100)
        ex._checks.check_float("t1", self.t1, 0.0)


CALLS = []


def _loss(theta):
    return 0.5 * ((theta - 1.0) ** 2).sum()


@functools.cache
def _draw(size):
    """One function per size, so that repeated sweeps reuse their compilation."""
    return lambda key: np.ones(size)


def _run_toy(config, context):
    CALLS.append(config)
    with context.sweep("toy", len(config.alphas), len(config.seeds)) as bar:
        result = sj.sweep(
            _loss,
            _draw(config.size),
            config.t1,
            alphas=config.alphas,
            seeds=config.seeds,
            chunk_size=1,
            n_save=8,
            checkpoint=context.checkpoint("sweep"),
            progress=False,
            on_chunk=bar.on_chunk,
        )
    if config.crash:
        raise KeyboardInterrupt  # interrupted after the sweep, before the folder is written
    final = np.asarray(result.solution.params)[..., -1, :]
    exact = 1 + (np.asarray(config.alphas)[:, None, None] - 1) * np.exp(-config.t1)
    return ex.Outcome(
        arrays={
            "alphas": ex.Array(("alpha",), np.asarray(config.alphas)),
            "final": ex.Array(("alpha", "seed", "coordinate"), final, "θ(t1)"),
        },
        values={"max_error": float(np.abs(final - exact).max())},
        checks=[ex.check_abs("θ(t1) against the closed form", np.abs(final - exact).max(), 0,
                             1e-4)],
        figures={"toy.png": lambda fig: fig.subplots().plot(final.reshape(-1))},
        table="toy table",
    )


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy experiment registered and a config file naming it; returns the file's path."""
    load_experiments()
    monkeypatch.setitem(EXPERIMENTS, "toy", ex.Experiment("toy", ToyConfig, _run_toy, "toy"))
    path = tmp_path / "toy.yaml"
    path.write_text("experiment: toy\ndescription: a toy\nsize: 2\nquick:\n  alphas: [0.5]\n")
    CALLS.clear()
    return path


def test_every_preset_resolves_in_both_modes():
    """Each shipped preset names a registered experiment and its full and quick configs pass
    that experiment's validation; its YAML says what it reproduces (a leading comment and a
    description)."""
    names = ex.preset_names()
    assert "jacot-fig1" in names
    for name in names:
        for quick in (False, True):
            (job,) = ex.configure(name, quick=quick)
            assert job.experiment.name in EXPERIMENTS
            assert job.resolved()["experiment"] == job.experiment.name
        text = ex.preset_path(name).read_text()
        assert text.startswith("#") and job.description, name


def test_overrides_and_grids(toy):
    """key=value sets a field (typed by the schema), key=a,b,c makes a grid of every
    combination with one folder label per member naming only the swept keys, a list takes
    brackets, the quick section applies under quick=True and overrides go on top of it."""
    (job,) = ex.configure(str(toy), ["t1=3"])
    assert job.config == ToyConfig(size=2, t1=3.0) and job.label == ""
    jobs = ex.configure(str(toy), ["size=1,2,3", "t1=1,2", "seeds=[4]"])
    assert len(jobs) == 6
    assert {(j.config.size, j.config.t1) for j in jobs} == {
        (s, t) for s in (1, 2, 3) for t in (1.0, 2.0)
    }
    assert jobs[0].label == "size=1,t1=1" and all(j.config.seeds == (4,) for j in jobs)
    (job,) = ex.configure(str(toy), quick=True)
    assert job.config.alphas == (0.5,)
    (job,) = ex.configure(str(toy), ["alphas=[0.2,0.3]"], quick=True)
    assert job.config.alphas == (0.2, 0.3)


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["sise=3"], ["`sise`", "did you mean 'size'"]),
        (["size=abc"], ["`size`", "abc"]),
        (["size=0"], ["`size`", "0"]),
        (["t1=-1"], ["`t1`"]),
        (["alphas=0.1,0.2"], ["`alphas` is a list", "alphas=[0.1,0.2]"]),
        (["size"], ["'size'", "key=value"]),
        (["size=1", "size=2"], ["'size'", "twice"]),
    ],
)
def test_bad_overrides_name_the_field(toy, overrides, words):
    """A bad override is a one-line ValueError naming the field (or the word) and the fix."""
    with pytest.raises(ValueError) as e:
        ex.configure(str(toy), overrides)
    message = str(e.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "content, words",
    [
        ("experiment: nope\n", ["nope", "matrix-completion"]),
        ("experiment: toy\nsize: [1\n", ["not valid YAML"]),
        ("- 1\n- 2\n", ["mapping"]),
        ("experiment: toy\nwidth: 3\n", ["`width`", "toy"]),
        ("experiment: toy\nquick: 3\n", ["`quick`"]),
    ],
)
def test_bad_config_files_are_refused(toy, tmp_path, content, words):
    """A config file naming an unknown experiment or field, or not a mapping, is refused."""
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        ex.configure(str(path))
    for word in words:
        assert word in str(e.value), str(e.value)
    with pytest.raises(ValueError, match="neither a config file nor a preset"):
        ex.configure("no-such-preset")


def test_run_folder_records_and_skips(toy, tmp_path):
    """A run folder holds the resolved config (loadable as a config file: it gives the same
    job), the environment, the arrays with their labelled axes, summary.json with the checks
    and the figure; a second run of the same job is skipped without computing; a job with
    other settings is refused naming the field, unless forced."""
    (job,) = ex.configure(str(toy))
    record = ex.execute(job, tmp_path / "out", progress=False)
    folder = record.folder
    assert not record.skipped and len(CALLS) == 1
    names = {p.name for p in folder.iterdir()}
    assert {"config.yaml", "environment.json", "results.npz", "schema.json", "summary.json"} <= (
        names
    )
    assert "checkpoints" not in names  # removed once the results are written
    (again,) = ex.configure(str(folder / "config.yaml"))
    assert again.config == job.config
    arrays = ex.load_results(folder)
    assert arrays["final"].dims == ("alpha", "seed", "coordinate")
    assert arrays["final"].values.shape == (2, 2, 2)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["passed"] and summary["checks"][0]["passed"]
    assert summary["values"]["max_error"] < 1e-4
    assert finished_config(folder) == job.resolved()
    env = json.loads((folder / "environment.json").read_text())
    assert env["versions"]["jax"] and env["precision"] == "float64"
    if ex.has_matplotlib():
        assert (folder / "toy.png").stat().st_size > 0
    assert ex.execute(job, tmp_path / "out", progress=False).skipped and len(CALLS) == 1
    (other,) = ex.configure(str(toy), ["t1=1"])
    with pytest.raises(ValueError, match="t1"):
        ex.execute(other, tmp_path / "out", progress=False)
    record = ex.execute(other, tmp_path / "out", force=True, progress=False)
    assert not record.skipped and len(CALLS) == 2
    assert OmegaConf.load(folder / "config.yaml").t1 == 1.0


def test_interrupted_run_keeps_finished_chunks(toy, tmp_path):
    """A run interrupted after its sweep leaves no summary.json (so it is not taken as
    finished) but keeps the sweep's chunks in the run folder's checkpoints/; the next run loads
    them instead of solving (and gives the same numbers as an uninterrupted run)."""
    (crash,) = ex.configure(str(toy), ["crash=true"])
    with pytest.raises(KeyboardInterrupt):
        ex.execute(crash, tmp_path / "out", progress=False)
    folder = tmp_path / "out"
    assert not (folder / "summary.json").exists()
    chunks = sorted((folder / "checkpoints" / "sweep").glob("*.eqx"))
    assert len(chunks) == 4  # 2 α × 2 seeds, one seed per chunk
    loaded = []
    context = ex.RunContext(False, folder / "checkpoints")
    real_sweep = sj.sweep

    def spy(*args, on_chunk=None, **kwargs):
        return real_sweep(*args, on_chunk=lambda r: (loaded.append(r["loaded"]), on_chunk(r)),
                          **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sj, "sweep", spy)
        outcome = _run_toy(dataclasses.replace(crash.config, crash=False), context)
    assert loaded == [True] * 4
    assert outcome.passed


def test_sweep_reports_each_chunk():
    """`sweep(on_chunk=...)` is called once per chunk with α, the seeds, the time each seed
    reached and its loss there (the closed form ½‖θ(t) − 1‖² of the toy flow), and the steps."""
    reports = []
    sj.sweep(
        _loss,
        _draw(2),
        1.5,
        alphas=[0.5],
        seeds=[0, 1, 2],
        chunk_size=2,
        n_save=4,
        progress=False,
        on_chunk=reports.append,
    )
    assert [r["seeds"] for r in reports] == [[0, 1], [2]]
    for r in reports:
        assert r["alpha"] == 0.5 and not r["loaded"] and r["failed"] == 0 and r["steps"] > 0
        np.testing.assert_allclose(r["t"], 1.5)
        np.testing.assert_allclose(r["loss"], 0.5 * 2 * (0.5 * np.exp(-1.5)) ** 2, rtol=1e-5)


def test_cli_runs_a_config_file_grid(toy, tmp_path):
    """`saddlejax run FILE key=a,b --out DIR` runs one folder per grid member, prints the checks,
    exits 0; run again it skips both; a bad override exits 2 with one line before any work."""
    out = tmp_path / "grid"
    code, stdout, err = run_cli(["run", str(toy), "size=1,3", "--out", str(out)])
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["size=1", "size=3"]
    assert stdout.count("[pass] θ(t1) against the closed form") == 2
    assert ex.load_results(out / "size=3")["final"].values.shape == (2, 2, 3)
    code, stdout, _ = run_cli(["run", str(toy), "size=1,3", "--out", str(out)])
    assert code == 0 and stdout.count("skipped") == 2 and len(CALLS) == 2
    code, stdout, err = run_cli(["run", str(toy), "size=0", "--out", str(tmp_path / "bad")])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "`size`" in err
    assert not (tmp_path / "bad").exists()


def test_reproduce_lists_and_refuses():
    """`saddlejax reproduce` without a name lists the presets; an unknown one exits 2 naming
    the presets."""
    code, stdout, _ = run_cli(["reproduce"])
    assert code == 0 and "jacot-fig1" in stdout
    code, _, err = run_cli(["reproduce", "jacot-fig99"])
    assert code == 2 and "jacot-fig1" in err and len(err.strip().splitlines()) == 1
