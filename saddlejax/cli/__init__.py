"""The `saddlejax` command line (`saddlejax.cli.main`): one module per sub-command."""

from ._main import (
    main as main,
    use_compilation_cache as use_compilation_cache,
    use_host_devices as use_host_devices,
)
