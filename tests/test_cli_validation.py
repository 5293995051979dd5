"""Validation at the door: every option of the `saddlejax` CLI and every field of the
experiments' configs is checked before any computation. A bad value ends in one line on stderr,
`saddlejax <command>: error: ...` naming the option as typed, and exit status 2, never a
traceback; the computations are replaced here by stubs that record the validated config."""

import contextlib
import dataclasses
import io
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import saddlejax.experiments as ex
from saddlejax.cli import main
from saddlejax.cli._main import build_parser
from saddlejax.experiments import (
    ESCAPE_PATH_PRESETS,
    ESCAPE_PRESETS,
    BenchConfig,
    EscapeConfig,
    EscapePathConfig,
    MatrixCompletionConfig,
)

RUNNERS = ("execute", "run_escape", "run_escape_path", "run_bench")


class Ran(Exception):
    """Raised by a stub runner: validation passed and the computation would start here."""

    def __init__(self, runner, config):
        self.runner, self.config = runner, config


def _stub(name):
    def runner(config, *args, **kwargs):
        raise Ran(name, getattr(config, "config", config))  # `execute` is given a `Job`

    return runner


@pytest.fixture
def stubs(monkeypatch):
    """The experiment runners replaced by stubs that raise `Ran` with the validated config."""
    for name in RUNNERS:
        monkeypatch.setattr(ex, name, _stub(name))


def cli(argv):
    """Run `main(argv)` in-process: (exit code or "ran", the `Ran` or None, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    ran = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code
        except Ran as r:
            code, ran = "ran", r
    return code, ran, out.getvalue(), err.getvalue()


def assert_refused(argv, *words):
    """`argv` exits 2 before any computation with one stderr line naming every word."""
    code, ran, _, err = cli(argv)
    assert ran is None, f"{argv} ran with {ran.config}"
    assert code == 2, (argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"saddlejax {argv[0]}: error: ") or lines[0].startswith(
        "saddlejax: error: "
    ), lines[0]
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# --- the problems found by a user, one by one -------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--depth", "0"], ["--depth", "0"]),
        (["run", "--depth", "1"], ["--depth", "L = 1"]),
        (["run", "--escape-radius", "1e9"], ["--escape-radius", "1e+09", "out of reach"]),
        (["run", "--alphas", "2"], ["--alphas", "2.0", "(0, 1)"]),
        (["run", "--alphas", "0.5"], ["--escape-radius", "--alphas", "0.5"]),
        (["run", "--alphas", "nan"], ["--alphas", "nan"]),
        (["run", "--alphas", "1e-300"], ["--alphas", "too small"]),
        (["run", "--alphas", "0.1", "0.1"], ["--alphas", "twice"]),
        (["run", "--t1-factor", "0"], ["--t1-factor", "0.0"]),
        (["run", "--t1-factor", "inf"], ["--t1-factor", "inf"]),
        (["run", "--rtol", "0"], ["--rtol"]),
        (["run", "--width", "0"], ["--width", "0"]),
        (["run", "--width", "100000"], ["--width", "parameters"]),
        (["run", "--seeds", "0"], ["--seeds", "0"]),
        (["run", "--seeds", "10000000000000"], ["--seeds"]),
        (["run", "--quick", "--alphas", "0.1"], ["--quick", "--alphas"]),
        (["run", "--out", ""], ["--out", "empty"]),
        (["run", "--checkpoint", " "], ["--checkpoint", "empty"]),
        (["run", "--width", "abc"], ["--width", "abc"]),
        (["run", "--solver", "euler"], ["--solver", "euler"]),
        (["escape", "--top", "0"], ["--top", "0"]),
        (["escape", "--depth", "1"], ["--depth", "1"]),
        (["escape", "--width", "0"], ["--width", "0"]),
        (["escape", "--restarts", "0"], ["--restarts", "0"]),
        (["escape", "--seed", "-1"], ["--seed", "-1"]),
        (["escape", "--preset", "squared_relu", "--depth", "3"], ["--depth", "3"]),
        (["escape", "--config", "/no/such/file.json"], ["--config", "/no/such/file.json"]),
        (["escape-path", "--alphas", "nan"], ["--alphas", "nan"]),
        (["escape-path", "--alphas", "0.5"], ["--alphas", "0.5", "--radius"]),
        (["escape-path", "--radius", "0.7"], ["--radius", "0.7", "--r-max"]),
        (["escape-path", "--r-min", "0"], ["--r-min", "0.0"]),
        (["escape-path", "--r-max", "3"], ["--r-max", "3.0"]),
        (["escape-path", "--n", "8"], ["--n", "8", "per decade"]),
        (["escape-path", "--index", "4"], ["--index", "4"]),
        (["escape-path", "--max-steps", "0"], ["--max-steps", "0"]),
        (["escape-path", "--png", "fig.xyz"], ["--png", "fig.xyz"]),
        (["bench", "--alphas", "0"], ["--alphas", "0.0"]),
        (["bench", "--alphas", "-inf"], ["--alphas"]),
        (["bench", "--json", ""], ["--json", "empty"]),
    ],
)
def test_bad_value_is_one_line_naming_the_option(argv, words, stubs):
    """Each bad value exits 2 with one line that names the option as typed (not the internal
    field: --t1-factor, not `t1_factor`) and the value, and nothing is computed."""
    line = assert_refused(argv, *words)
    what = line.split("error:", 1)[1].split(";")[0]
    assert "`" not in what, line  # no internal field name (`t1_factor`) where an option is due


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--alpha", "0.1"],
        ["run", "--t1", "3"],
        ["run", "--escape", "2"],
        ["escape", "--dep", "3"],
        ["escape-path", "--alpha", "0.01"],
        ["escape-path", "--r-m", "0.1"],
        ["bench", "--js", "x.json"],
    ],
)
def test_abbreviations_are_refused(argv, stubs):
    """A prefix of an option is not that option (`--alpha` is not `--alphas`)."""
    assert_refused(argv, argv[1])


def test_no_parser_allows_abbreviations():
    """allow_abbrev=False on the main parser and on every sub-command's parser."""
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subs) == {"run", "reproduce", "escape", "escape-path", "bench", "chain"}
    for p in [parser, *subs.values()]:
        assert p.allow_abbrev is False, p.prog


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "chain-deep-relu", "--quick", "smoothing=1e-4", "width=3"],
        ["run", "--quick", "chain-deep-relu", "smoothing=1e-4", "width=3"],
        ["run", "chain-deep-relu", "smoothing=1e-4", "--quick", "width=3"],
    ],
)
def test_run_overrides_around_options(argv):
    """`run`'s config and key=value overrides may come before, between or after its options;
    an unknown option among them is still refused."""
    parsed = build_parser().parse_args(argv)
    assert parsed.words == ["chain-deep-relu", "smoothing=1e-4", "width=3"] and parsed.quick
    assert_refused([*argv, "--bogus"], "--bogus")


# --- output paths are checked before the computation -------------------------------------------


def test_output_paths_checked_before_work(tmp_path, stubs):
    """An output path that is a file where a folder is due (or the reverse), below a file, or
    in an unwritable place is refused before any computation."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert_refused(["run", "--out", str(a_file)], "--out", "is a file")
    assert_refused(["run", "--out", str(a_file / "sub")], "--out", "a_file")
    assert_refused(["run", "--checkpoint", str(a_file)], "--checkpoint", "is a file")
    (tmp_path / "out" / "summary.json").mkdir(parents=True)
    assert_refused(["run", "--out", str(tmp_path / "out")], "--out", "summary.json")
    assert_refused(["bench", "--json", str(tmp_path)], "--json", "is a folder")
    assert_refused(["bench", "--json", str(a_file / "x.json")], "--json", "a_file")
    pytest.importorskip("matplotlib")
    assert_refused(["escape-path", "--png", str(a_file / "x.png")], "--png", "a_file")
    assert_refused(["escape-path", "--png", str(tmp_path)], "--png")


def test_unwritable_output_is_refused(tmp_path, stubs):
    """A folder where nothing can be written (read-only for this user, or a pseudo file
    system) is refused by a write test, not only by its permission bits."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        probe = locked / "probe"
        try:
            probe.write_text("")
            probe.unlink()
            target = Path("/proc/1/no-such-folder")  # root writes anywhere: use a pseudo FS
        except OSError:
            target = locked / "out"
        assert_refused(["run", "--out", str(target)], "--out", "cannot write")
        assert_refused(["bench", "--json", str(target / "b.json")], "--json", "cannot write")
    finally:
        locked.chmod(0o700)


def test_good_output_paths_pass_and_create_nothing(tmp_path, stubs):
    """Valid output paths pass the check, which leaves no file or folder behind (folders are
    made only when the results are written)."""
    code, ran, _, err = cli(["run", "--quick", "--out", str(tmp_path / "new" / "run")])
    assert code == "ran" and ran.runner == "execute", err
    code, ran, _, err = cli(["bench", "--json", str(tmp_path / "b" / "bench.json")])
    assert code == "ran" and ran.runner == "run_bench", err
    assert list(tmp_path.iterdir()) == []


# --- escape --config -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, words",
    [
        ("{bad json", ["--config", "not valid JSON"]),
        ("[1, 2]", ["--config", "JSON object", "list"]),
        ('{"widht": 3}', ["--config", "widht"]),
        ('{"name": "dln4"}', ["--config", "name"]),
        ('{"depth": "3"}', ['"depth"', "--config", "'3'"]),
        ('{"depth": 2.5}', ['"depth"', "2.5"]),
        ('{"model": "relu"}', ['"model"', "matrix_completion"]),
        ('{"model": "squared_relu", "problem": "teacher"}', ['"model"', "squared_relu_toy"]),
        ('{"top": 0}', ['"top"', "--config"]),
        (b"\xff\xfe\x00", ["--config", "cannot read"]),
    ],
)
def test_escape_config_file_errors(tmp_path, content, words, stubs):
    """A --config file that is not JSON, not an object, has an unknown key or a bad value
    exits 2 with one line naming the file and the key (the key is not an option)."""
    path = tmp_path / "c.json"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    line = assert_refused(["escape", "--config", str(path)], *words)
    assert "--top" not in line and "--depth" not in line


def test_escape_config_precedence(tmp_path, stubs):
    """Preset < --config file < options; a key of the file overridden by an option is the
    option's value."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": "relu", "problem": "teacher", "depth": 3, "top": 2}))
    code, ran, _, err = cli(["escape", "--config", str(path), "--depth", "2", "--seed", "7"])
    assert code == "ran", err
    expected = EscapeConfig(
        model="relu", problem="teacher", depth=2, width=100, restarts=8, seed=7, top=2
    )
    assert ran.config == expected
    assert_refused(["escape", "--config", str(tmp_path)], "--config", "cannot read")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
CONFIG_KEYS = [f.name for f in dataclasses.fields(EscapeConfig)] + ["name", "cls", "", "wdth"]


def test_fuzz_escape_config_files(tmp_path_factory):
    """Random --config files (any JSON: objects with real and wrong keys and values of every
    JSON type, arrays, scalars, broken text) either pass and match the file or exit 2 with one
    line; never a traceback."""
    path = tmp_path_factory.mktemp("config") / "c.json"
    tally = {"tried": 0, "ran": 0}

    @settings(max_examples=300, deadline=None, database=None)
    @given(
        st.one_of(
            st.dictionaries(st.sampled_from(CONFIG_KEYS), JSON, max_size=4).map(json.dumps),
            JSON.map(json.dumps),
            st.text(max_size=20),
        )
    )
    def one(text):
        tally["tried"] += 1
        path.write_text(text)
        with pytest.MonkeyPatch.context() as mp:
            for name in RUNNERS:
                mp.setattr(ex, name, _stub(name))
            code, ran, _, err = cli(["escape", "--config", str(path)])
        if ran is not None:
            tally["ran"] += 1
            content = json.loads(text)
            preset = {**ESCAPE_PRESETS["dln4"], "restarts": 8, "seed": 0, "top": 5}
            preset.update({k: v for k, v in content.items() if v is not None})
            assert dataclasses.asdict(ran.config) == preset
        else:
            assert code == 2 and len(err.strip().splitlines()) == 1, (text, code, err)
            assert "--config" in err

    one()
    print(f"\n--config fuzz: {tally['tried']} files, {tally['ran']} accepted")


# --- the configs themselves --------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls, kwargs, field",
    [
        (MatrixCompletionConfig, dict(depth=1), "depth"),
        (MatrixCompletionConfig, dict(depth=4.0), "depth"),
        (MatrixCompletionConfig, dict(width=True), "width"),
        (MatrixCompletionConfig, dict(n=0), "n"),
        (MatrixCompletionConfig, dict(rank=11), "rank"),
        (MatrixCompletionConfig, dict(observed=0.0), "observed"),
        (MatrixCompletionConfig, dict(alphas=()), "alphas"),
        (MatrixCompletionConfig, dict(alphas=0.1), "alphas"),
        (MatrixCompletionConfig, dict(alphas=("0.1",)), "alphas"),
        (MatrixCompletionConfig, dict(alphas=(1.0,)), "alphas"),
        (MatrixCompletionConfig, dict(seeds=(0, 0)), "seeds"),
        (MatrixCompletionConfig, dict(seeds=(-1,)), "seeds"),
        (MatrixCompletionConfig, dict(t1_factor=-1.0), "t1_factor"),
        (MatrixCompletionConfig, dict(t1_factor=1e300, alphas=(1e-3,)), "t1_factor"),
        (MatrixCompletionConfig, dict(t1_factor=10**400), "t1_factor"),
        (MatrixCompletionConfig, dict(escape_radius=1.0), "escape_radius"),
        (MatrixCompletionConfig, dict(escape_radius=float("nan")), "escape_radius"),
        (MatrixCompletionConfig, dict(rank_tol=0.0), "rank_tol"),
        (MatrixCompletionConfig, dict(solver=3), "solver"),
        (MatrixCompletionConfig, dict(rtol=1e-20), "rtol"),
        (MatrixCompletionConfig, dict(n_save=1), "n_save"),
        (EscapeConfig, dict(model="cnn"), "model"),
        (EscapeConfig, dict(problem="mnist"), "problem"),
        (EscapeConfig, dict(model="relu"), "model"),
        (EscapeConfig, dict(depth=33), "depth"),
        (EscapeConfig, dict(width=10**4), "width"),
        (EscapeConfig, dict(restarts=10**4), "restarts"),
        (EscapeConfig, dict(seed=2**32), "seed"),
        (EscapeConfig, dict(top=0), "top"),
        (EscapePathConfig, dict(tail="x"), "tail"),
        (EscapePathConfig, dict(depth=9), "depth"),
        (EscapePathConfig, dict(hidden=0), "hidden"),
        (EscapePathConfig, dict(index=-1), "index"),
        (EscapePathConfig, dict(n=10), "n"),
        (EscapePathConfig, dict(r_min=0.6), "r_max"),
        (EscapePathConfig, dict(radius=1e-5), "radius"),
        (EscapePathConfig, dict(alphas=(float("inf"),)), "alphas"),
        (EscapePathConfig, dict(max_steps=10**6), "max_steps"),
        (BenchConfig, dict(alphas=()), "alphas"),
        (BenchConfig, dict(alphas=(0.1, 2.0)), "alphas"),
    ],
)
def test_config_names_the_bad_field(cls, kwargs, field):
    """A config refuses a bad field with a ValueError that names it in backquotes."""
    with pytest.raises(ValueError, match=f"`{field}`"):
        cls(**kwargs)


def test_configs_accept_defaults_and_presets():
    """The defaults and every preset pass their own checks, and the checked sequences are
    tuples of floats (a config built from lists equals the one built from tuples)."""
    MatrixCompletionConfig()
    BenchConfig()
    for name in ESCAPE_PRESETS:
        EscapeConfig.preset(name)
    for name in ESCAPE_PATH_PRESETS:
        EscapePathConfig.preset(name)
    assert MatrixCompletionConfig(alphas=[0.1, 0.05], seeds=[0, 1]) == MatrixCompletionConfig(
        alphas=(0.1, 0.05), seeds=(0, 1)
    )
    assert EscapeConfig(depth=np.int64(3), seed=np.uint32(2)).depth == 3  # NumPy ints are ints


def test_escape_radius_bounds_follow_the_draws():
    """The radius window of the main job: below α‖θ̃‖ of the actual draws is refused, and the
    expected ‖θ̃‖ it uses is within 2 % of the draws for the default sizes; escape-path checks
    the draw θ̃ itself, to the digit."""
    import jax.numpy as jnp
    import jax.random as jr

    import saddlejax as sj

    def norm(weights):
        return float(jnp.sqrt(sum(jnp.sum(w**2) for w in weights)))

    c = MatrixCompletionConfig()
    norms = [norm(sj.nn.DeepLinear(c.widths, key=jr.key(s)).weights) for s in c.seeds]
    assert max(abs(n / c.init_norm - 1) for n in norms) < 0.02
    p = EscapePathConfig()
    base_norm = norm(sj.dln_image_init(p.widths, key=jr.key(p.seed + 1)))
    limit = p.radius / base_norm
    EscapePathConfig(alphas=(limit * (1 - 1e-9),))
    with pytest.raises(ValueError, match="`alphas`"):
        EscapePathConfig(alphas=(limit * (1 + 1e-9),))


def test_run_warns_when_radius_not_reached(tmp_path, monkeypatch):
    """An experiment's warnings (here: a seed that never reached ‖θ‖ = r) are lines on stderr
    naming the settings to change, its failed solves `FAILED` lines; the results are still
    written and the exit status says whether any seed failed."""
    from saddlejax.experiments._config import EXPERIMENTS, load_experiments
    from saddlejax.experiments._record import Outcome

    load_experiments()
    config = MatrixCompletionConfig(alphas=(0.1, 0.05), seeds=(0, 1))
    event = np.array([[50.0, np.nan], [200.0, np.inf]])
    outcome = Outcome(
        failures=["α = 0.1, seed 1: max_steps reached"],
        warnings=ex._matrix_completion._unescaped(config, event, [(0.1, 1, "max_steps")]),
    )
    experiment = EXPERIMENTS["matrix-completion"]
    monkeypatch.setitem(
        EXPERIMENTS, "matrix-completion", dataclasses.replace(experiment, run=lambda c, p: outcome)
    )
    out = tmp_path / "run"
    code, _, stdout, err = cli(
        ["run", "--alphas", "0.1", "0.05", "--seeds", "2", "--out", str(out)]
    )
    assert code == 1, err
    assert "FAILED α = 0.1, seed 1" in stdout
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "α = 0.05" in warnings[0] and "1 of 2 seeds" in warnings[0]
    assert "t1_factor" in warnings[0] and "escape_radius" in warnings[0]
    assert (out / "summary.json").exists()


# --- the fuzz test -------------------------------------------------------------------------------


def _actions():
    """{command: {option: argparse action}} of the real parser."""
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    return {
        name: {s: a for a in p._actions for s in a.option_strings if s not in ("-h", "--help")}
        for name, p in subs.items()
    }


ACTIONS = _actions()
NUMBERS = [
    "0", "-0", "1", "-1", "2", "3", "4", "7", "0.5", "0.3", "0.1", "0.05", "0.01", "1e-3",
    "1e-4", "1e-8", "1e-300", "1e308", "1e999", "-1e-3", "nan", "-nan", "inf", "-inf",
    "99999999999999999999", "1_000", "0x10", "", " ", "abc", "1,5", "1e", "２", "None", "[1]",
]
PATHS = ["", " ", "out", "out/sub", "fig.png", "fig.xyz", "fig", "a_file", "a_file/x.png",
         "a_folder", "/proc/1/x", "good.json", "bad.json", "list.json", "~/nowhere/x.png"]
JUNK = ["--alpha", "--bogus", "--t1", "-x", "-", "--", "extra", "--preset=dln9", "--json=1",
        "--help", "-h", "--quick=1", "--seed", "=", "--depth=3", "--radius=0.2"]
FILES = {
    "good.json": {"model": "dln", "problem": "teacher", "depth": 3, "width": 8, "top": 2},
    "bad.json": "{not json",
    "list.json": [1, 2],
}


def _value(action):
    """A strategy for one value of `action`: mostly plausible, often wrong."""
    if action.choices:
        return st.one_of(st.sampled_from(sorted(action.choices)), st.sampled_from(NUMBERS))
    if action.type is int:
        return st.one_of(st.integers(-5, 12).map(str), st.integers(-(2**70), 2**70).map(str),
                         st.sampled_from(NUMBERS))
    if action.type is float:
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                         st.floats(1e-6, 1.2).map(repr), st.sampled_from(NUMBERS))
    return st.one_of(st.sampled_from(PATHS), st.sampled_from(NUMBERS))


@st.composite
def argvs(draw):
    """(argv, items, junk): a sub-command (sometimes a wrong one or none), then options of the
    real set with zero to three values (the right count most of the time), plus junk tokens."""
    command = draw(st.sampled_from([*ACTIONS, *ACTIONS, *ACTIONS, "rnu", "--help", ""]))
    actions = ACTIONS.get(command, ACTIONS["run"])
    items = []
    for _ in range(draw(st.integers(0, 5))):
        option = draw(st.sampled_from(sorted(actions)))
        action = actions[option]
        if action.nargs == 0:
            right = 0
        elif action.nargs in ("+", "*"):
            right = draw(st.integers(0 if action.nargs == "*" else 1, 3))
        else:
            right = 1
        count = right if draw(st.integers(0, 9)) else draw(st.integers(0, 3))
        items.append((option, [draw(_value(action)) for _ in range(count)]))
    junk = draw(st.lists(st.sampled_from(JUNK), max_size=2)) if draw(st.integers(0, 4)) == 0 else []
    argv = [command] if command else []
    for option, values in items:
        argv += [option, *values]
    for token in junk:
        argv.insert(draw(st.integers(0, len(argv))), token)
    return argv, items, junk


def _expected(command, items):
    """The config fields that the options set, parsed here independently of argparse (the last
    occurrence wins), as {field: value}; `None` for a field not given."""
    given = {}
    for option, values in items:
        action = ACTIONS[command][option]
        if action.nargs == 0:
            given[action.dest] = True
        elif action.nargs in ("+", "*"):
            given[action.dest] = tuple(float(v) for v in values)
        else:
            value = values[0]
            given[action.dest] = (
                int(value) if action.type is int else float(value) if action.type is float
                else value
            )
    return given


def _check_config(command, items, config):
    """The config that reached the runner holds exactly what the command line said (and the
    defaults, the preset or the --config file for the rest)."""
    given = _expected(command, items)
    if command == "run":
        quick = given.get("quick", False)
        d = ex.configure("jacot-fig1", quick=quick)[0].config
        assert config.alphas == given.get("alphas", d.alphas)
        assert config.seeds == (tuple(range(given["seeds"])) if "seeds" in given else d.seeds)
        for field in ("width", "depth", "solver", "rtol", "t1_factor", "escape_radius"):
            assert getattr(config, field) == given.get(field, getattr(d, field)), field
    elif command == "escape":
        preset = dict(ESCAPE_PRESETS[given.get("preset", "dln4")])
        preset.update(restarts=8, seed=0, top=5)
        if "config" in given:
            preset.update(FILES[given["config"].strip()])
        for field in ("model", "problem", "depth", "width", "restarts", "seed", "top"):
            assert getattr(config, field) == given.get(field, preset[field]), field
    elif command == "escape-path":
        preset = {**dataclasses.asdict(EscapePathConfig()),
                  **ESCAPE_PATH_PRESETS[given.get("preset", "dln2")]}
        for field in ("seed", "index", "n", "r_min", "r_max", "radius", "alphas", "tail",
                      "max_steps", "depth", "hidden"):
            assert getattr(config, field) == given.get(field, preset[field]), field
    elif command == "chain":
        name = f"chain-{given.get('problem', 'jacot-fig1')}"
        d = ex.configure(name, quick=given.get("quick", False))[0].config
        alphas = tuple(sorted(given["alphas"], reverse=True)) if "alphas" in given else d.alphas
        assert config.alphas == alphas
        for field in ("seed", "max_saddles", "max_branches"):
            assert getattr(config, field) == given.get(field, getattr(d, field)), field
    else:  # run_bench takes the checked alphas
        assert tuple(config) == given.get("alphas", (0.1, 0.01))


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang()


def test_fuzz_cli_never_tracebacks():
    """Random command lines over the real option set plus junk and wrong values (0, negative,
    nan, inf, huge, empty, words, missing and extra values): every one exits 0 or 2 within
    seconds, no traceback; a refusal is exactly one stderr line; an accepted one reaches the
    (stubbed) computation with a config that matches the command line."""
    tally = {"tried": 0, "refused": 0, "ran": 0, "help": 0, "checked": 0}
    slowest = [0.0, None]
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        Path("a_file").write_text("x")
        Path("a_folder").mkdir()
        for name, content in FILES.items():
            Path(name).write_text(content if isinstance(content, str) else json.dumps(content))
        for name in RUNNERS:
            mp.setattr(ex, name, _stub(name))
        old = signal.signal(signal.SIGALRM, _alarm)

        @settings(max_examples=int(os.environ.get("SADDLEJAX_FUZZ_EXAMPLES", 1500)),
                  deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(argvs())
        def one(case):
            argv, items, junk = case
            tally["tried"] += 1
            start = time.perf_counter()
            signal.alarm(30)
            try:
                code, ran, out, err = cli(argv)
            except _Hang:
                raise AssertionError(f"{argv} ran for more than 30 s") from None
            finally:
                signal.alarm(0)
            elapsed = time.perf_counter() - start
            if elapsed > slowest[0]:
                slowest[:] = [elapsed, argv]
            assert "Traceback" not in err, (argv, err)
            if ran is not None:
                tally["ran"] += 1
                assert not err.strip(), (argv, err)
                if not junk:
                    _check_config(argv[0], items, ran.config)
                    tally["checked"] += 1
                return
            assert code in (0, 2), (argv, code, err)
            if code == 2:
                tally["refused"] += 1
                lines = err.strip().splitlines()
                assert len(lines) == 1 and ": error: " in lines[0], (argv, err)
            else:
                tally["help"] += 1
                assert not err.strip() and "usage:" in out, (argv, out, err)

        try:
            start = time.perf_counter()
            one()
        finally:
            signal.signal(signal.SIGALRM, old)
        assert sorted(os.listdir(".")) == sorted(["a_file", "a_folder", *FILES]), os.listdir(".")
    print(
        f"\nCLI fuzz: {tally['tried']} command lines in {time.perf_counter() - start:.1f} s: "
        f"{tally['refused']} refused (exit 2, one line), {tally['ran']} accepted "
        f"({tally['checked']} configs checked against the command line), {tally['help']} help "
        f"(exit 0); slowest {slowest[0]:.2f} s: {slowest[1]}"
    )
    assert tally["ran"] > 10 and tally["refused"] > 100


def test_stale_checkpoint_folder_is_refused_in_one_line(tmp_path):
    """`run --checkpoint DIR` on a folder written by another configuration or version stops
    before any solve with one line naming `--checkpoint` (the sweep's fingerprint check), and
    leaves the folder as it was. DIR holds one folder per sweep of the experiment."""
    folder = tmp_path / "ck" / "sweep"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({"format": -1, "alphas": [0.1]}))
    before = (folder / "sweep.json").read_bytes()
    code, ran, _, err = cli(["run", "--quick", "--width", "4", "--checkpoint", str(folder.parent),
                             "--out", str(tmp_path / "out")])
    assert ran is None and code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--checkpoint" in lines[0] and "another version" in lines[0], err
    assert (folder / "sweep.json").read_bytes() == before
