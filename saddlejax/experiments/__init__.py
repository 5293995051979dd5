"""The papers' experiments as functions of a config, and the machinery that runs them from
config files (`saddlejax run CONFIG key=value`, `saddlejax reproduce NAME`) into run folders.

An experiment is registered with `register(name, ConfigDataclass, doc)` on a function
`run(config, context) -> Outcome`; its presets are YAML files in `configs/` (see `_config`);
`execute` writes a run folder (see `_record`), `run_preset` returns the `Outcome` in Python.

- `run_matrix_completion`: the main job, saddle-to-saddle dynamics of a deep linear network on
  matrix completion (Jacot et al. Fig. 1; `saddlejax run`).
- `run_escape`: Taylor orders, escape directions and speeds at the origin (`saddlejax escape`).
- `run_escape_path`: Ψ of a DLN escape path with the checks of Jacot et al. Thm 2, 5, 22
  (`saddlejax escape-path`).
- `run_bench`: a quick benchmark of the engine (`saddlejax bench`; the full suite is
  `benchmarks/`), with the measuring tools the benchmarks share.

Figures need matplotlib, the `plot` extra (`pip install 'saddlejax[plot]'`).
"""

from ._bench import (
    BenchConfig as BenchConfig,
    bench_table as bench_table,
    lambda_max as lambda_max,
    markdown_table as markdown_table,
    run_bench as run_bench,
)
from ._config import (
    EXPERIMENTS as EXPERIMENTS,
    Experiment as Experiment,
    Job as Job,
    configure as configure,
    preset_names as preset_names,
    preset_path as preset_path,
    register as register,
)
from ._escape import (
    ESCAPE_PRESETS as ESCAPE_PRESETS,
    EscapeConfig as EscapeConfig,
    run_escape as run_escape,
)
from ._escape_path import (
    ESCAPE_PATH_PRESETS as ESCAPE_PATH_PRESETS,
    EscapePathConfig as EscapePathConfig,
    EscapePathRun as EscapePathRun,
    plot_escape_path as plot_escape_path,
    run_escape_path as run_escape_path,
)
from ._execute import (
    RunRecord as RunRecord,
    execute as execute,
    run_folder as run_folder,
    run_preset as run_preset,
    show as show,
)
from ._machine import (
    gradient_seconds as gradient_seconds,
    hvp_seconds as hvp_seconds,
    machine_description as machine_description,
)
from ._matrix_completion import (
    MatrixCompletionConfig as MatrixCompletionConfig,
    matrix_completion_table as matrix_completion_table,
    plot_matrix_completion as plot_matrix_completion,
    run_matrix_completion as run_matrix_completion,
)
from ._plot import figure as figure, has_matplotlib as has_matplotlib
from ._progress import RunContext as RunContext, Task as Task
from ._record import (
    Array as Array,
    Check as Check,
    Outcome as Outcome,
    check_abs as check_abs,
    check_at_least as check_at_least,
    check_at_most as check_at_most,
    check_close as check_close,
    check_equal as check_equal,
    checks_table as checks_table,
    load_results as load_results,
)
