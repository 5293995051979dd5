"""The papers' experiments as functions of a config; each is also a sub-command of the
`saddlejax` CLI, which only parses arguments, calls these and prints.

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
    save_matrix_completion as save_matrix_completion,
)
from ._plot import figure as figure, has_matplotlib as has_matplotlib
