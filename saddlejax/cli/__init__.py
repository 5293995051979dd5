"""The `saddlejax` command line (`saddlejax.cli.main`): one module per sub-command."""

from ._main import main as main, use_host_devices as use_host_devices
