"""benchkit command line: ``benchkit COMMAND --help`` for each command (the app: ``benchkit.cli.app``).

Exit codes: 0 success, 1 runtime error (training diverged, unreadable checkpoint), 2 usage error (bad name,
option, value or combination). Results go to stdout, logs and progress to stderr.
"""

from benchkit.core.threads import prepare_openmp

prepare_openmp()  # before anything imports torch: OpenMP reads its wait policy once, when it is loaded

from benchkit.cli.app import app, main  # noqa: E402

__all__ = ["app", "main"]
