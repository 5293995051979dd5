"""Experiments as configs: a registry of experiments, config files, command-line overrides and
grid sweeps, on OmegaConf (YAML, typed merges of dataclass schemas, `key=value` dot-lists).

An *experiment* is a computation with a frozen dataclass of settings that validates itself in
`__post_init__` (a bad value raises a `ValueError` naming the field in backquotes) and a
function `run(config, progress) -> Outcome`. A *config file* is YAML naming the experiment and
setting some of its fields:

    experiment: matrix-completion        # a name of `EXPERIMENTS`
    description: Jacot et al. Fig. 1     # optional, one line
    alphas: [0.01, 0.003, 0.001]         # fields of the experiment's config
    quick:                               # optional: what `--quick` changes
      alphas: [0.05, 0.02]

The presets (`saddlejax reproduce NAME`) are such files, shipped in `saddlejax/experiments/
configs/`. Overrides follow Hydra's grammar: `key=value` (OmegaConf's YAML values, `[a,b]` for a
list) and `key=a,b,c` for a grid: one run per combination of the swept values, as Hydra's
multirun does.
"""

import dataclasses
import re
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from .._validate import did_you_mean

CONFIG_DIR = Path(__file__).parent / "configs"
# Keys of a config file that are not fields of the experiment's config.
RESERVED = ("experiment", "description", "paper", "quick", "full")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A registered experiment: its `name`, its `config` dataclass, its `run` function and a
    one-line `doc`."""

    name: str
    config: type
    run: Callable
    doc: str


EXPERIMENTS: dict[str, Experiment] = {}

# The modules of `saddlejax.experiments` that register experiments, imported on first use.
EXPERIMENT_MODULES = (
    "_matrix_completion",
    "_jacot_regimes",
    "_jacot_escape",
    "_relu_lowrank",
    "_kumar_haupt",
    "_chen_luo_wang",
    "_saddle_chain",
)


def load_experiments() -> dict[str, Experiment]:
    """`EXPERIMENTS`, with every module that registers one imported."""
    import importlib
    import importlib.util

    for name in EXPERIMENT_MODULES:
        module = f"{__package__}.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return EXPERIMENTS


def register(name: str, config: type, doc: str):
    """Decorator registering `run(config, progress) -> Outcome` as experiment `name`."""

    def wrap(run):
        EXPERIMENTS[name] = Experiment(name, config, run, doc)
        return run

    return wrap


@dataclasses.dataclass(frozen=True)
class Job:
    """One run: the experiment, its validated config, the overrides that made it (`label`, a
    folder name for a grid member; "" for a single run) and where the config came from."""

    experiment: Experiment
    config: typing.Any
    label: str
    source: str
    description: str = ""

    def resolved(self) -> dict:
        """The resolved config as plain data (what `summary.json` and `config.yaml` hold)."""
        return {"experiment": self.experiment.name, **_plain(dataclasses.asdict(self.config))}

    def yaml(self) -> str:
        from omegaconf import OmegaConf

        head = f"# {self.description}\n" if self.description else ""
        return head + OmegaConf.to_yaml(OmegaConf.create(self.resolved()))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def preset_names() -> list[str]:
    """The shipped presets (`saddlejax reproduce NAME`)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.yaml"


def _read(source: str | Path) -> tuple[dict, str]:
    """The mapping of a config file or preset name, and the name runs are filed under."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    text = str(source)
    path = Path(text).expanduser()
    if not path.suffix and not path.exists():
        if text not in preset_names():
            raise ValueError(
                f"CONFIG {text!r} is neither a config file nor a preset; give a .yaml path or "
                f"one of: {', '.join(preset_names())}"
            )
        path = preset_path(text)
    if not path.is_file():
        raise ValueError(f"CONFIG {text!r}: no such file; give a .yaml path or a preset name")
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except (OmegaConfBaseException, yaml.YAMLError, ValueError, OSError) as e:
        raise ValueError(f"CONFIG {text!r} is not valid YAML ({_first_line(e)})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"CONFIG {text!r} must be a mapping of settings (`experiment: ...`, fields), got "
            f"a {type(data).__name__}"
        )
    return data, path.stem


def _first_line(e: Exception) -> str:
    return " ".join(str(e).split("\n")[0].split())


def split_overrides(overrides: Sequence[str]) -> list[tuple[str, list[str]]]:
    """[(key, values)] of `key=value` or `key=a,b,c` words: commas outside brackets and quotes
    separate the values of a grid; one value is a plain override."""
    out = []
    for word in overrides:
        key, eq, value = word.partition("=")
        key = key.strip()
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(
                f"override {word!r} is not key=value; write e.g. width=10, or width=10,100 "
                "for a grid"
            )
        out.append((key, _split_top(value)))
    keys = [k for k, _ in out]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"override {twice[0]!r} is given twice; give each key once")
    return out


def _split_top(value: str) -> list[str]:
    parts, depth, quote, cur = [], 0, None, []
    for ch in value:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _label(combo: Sequence[tuple[str, str]]) -> str:
    """A folder name for a grid member: key=value pairs, characters unsafe in paths replaced."""
    text = ",".join(f"{k}={v}" for k, v in combo)
    return re.sub(r"[^A-Za-z0-9_.=,+\-\[\]]", "_", text)


def _is_sequence(tp) -> bool:
    origin = typing.get_origin(tp)
    return origin in (tuple, list, Sequence) or tp in (tuple, list)


def configure(
    source: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    quick: bool = False,
    default: str = "jacot-fig1",
) -> list[Job]:
    """The jobs of a config file or preset (`source`; default the preset `default`), with
    `--quick` applied when asked and the command-line `overrides` on top; a grid override gives
    one job per combination. Every config is validated here, before any work: a bad value
    raises a `ValueError` naming the field in backquotes."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    load_experiments()
    data, name = _read(default if source is None else source)
    kind = data.get("experiment")
    if kind not in EXPERIMENTS:
        raise ValueError(
            f"CONFIG {name!r} names experiment {kind!r}; use one of: "
            f"{', '.join(sorted(EXPERIMENTS))}"
        )
    experiment = EXPERIMENTS[kind]
    quick_part = data.get("quick") or {}
    if not isinstance(quick_part, dict):
        raise ValueError(f"CONFIG {name!r}: `quick` must be a mapping of fields")
    fields = {f.name: f for f in dataclasses.fields(experiment.config)}
    base = {k: v for k, v in data.items() if k not in RESERVED}
    for key in [*base, *quick_part]:
        if key not in fields:
            raise ValueError(_unknown(key, fields, experiment.name))
    grid = split_overrides(overrides)
    for key, values in grid:
        if key not in fields:
            raise ValueError(_unknown(key, fields, experiment.name))
        hint = typing.get_type_hints(experiment.config).get(key)
        if _is_sequence(hint) and any(not v.strip().startswith("[") for v in values):
            raise ValueError(
                f"`{key}` is a list: write {key}=[{','.join(values)}] (commas without "
                "brackets make a grid of runs)"
            )
    combos = [[]]
    for key, values in grid:
        combos = [c + [(key, v)] for c in combos for v in values]
    schema = OmegaConf.structured(experiment.config)
    jobs = []
    for combo in combos:
        try:
            merged = OmegaConf.merge(
                schema,
                base,
                quick_part if quick else {},
                OmegaConf.from_dotlist([f"{k}={v}" for k, v in combo]),
            )
            config = OmegaConf.to_object(merged)
        except OmegaConfBaseException as e:
            raise ValueError(_omegaconf_message(e)) from None
        swept = {k for k, values in grid if len(values) > 1}
        label = _label([(k, v) for k, v in combo if k in swept])
        jobs.append(
            Job(experiment, config, label, name, str(data.get("description", "")))
        )
    return jobs


def _unknown(key, fields, experiment) -> str:
    return (
        f"`{key}` is not a setting of experiment {experiment!r}; {did_you_mean(key, fields)}"
        f"its settings are {', '.join(fields)}"
    )


def _omegaconf_message(e) -> str:
    """OmegaConf's type error as one line naming the field in backquotes."""
    key = getattr(e, "full_key", None) or getattr(e, "key", None)
    msg = _first_line(e)
    return f"`{key}`: {msg}" if key else msg
