"""The papers' experiments as functions of a config (each also a CLI sub-command)."""

from ._matrix_completion import (
    MatrixCompletionConfig as MatrixCompletionConfig,
    run_matrix_completion as run_matrix_completion,
)
