"""What every hwnas command shares: exit codes, error reporting, output checks, torch threads.

The rule for every command (README, "Exit codes"):

    0    done
    1    the work failed: an input's content is unreadable or corrupt, a device or host cannot be
         reached or measured, a model could not be predicted, ...
    2    usage error: the command line is wrong (a malformed or out-of-range value, an unknown name,
         a path that is missing or of the wrong kind, an output that cannot be written or would
         replace earlier results without --overwrite). Found before any work starts.
    3    (search) the latency budget is below the fastest candidate
    130  interrupted (Ctrl-C); what was done so far is written

How a command is written (follow this when you add one, or an option to one):

1. The library's configuration dataclass validates its values in `__post_init__` and raises
   `profiling.validate.ConfigError(param, problem)` naming the *parameter* (`latency_budget_ms`),
   never a flag: the library does not know about the command line.
2. The command builds that dataclass first, inside `with cli_errors(FLAGS):` where `FLAGS` maps
   parameter names to flags (`{"latency_budget_ms": "--latency-budget"}`; a parameter missing
   from it is looked up among the running command's options by their click names, else shown
   as `--` + its name with dashes). A library message names other parameters in backticks
   (`host`), shown as their flags in the same way (`error_text`). A `ConfigError` becomes
   "error: --latency-budget: ..." and exit 2; any other `HwnasError` (or an `OSError`) becomes
   "error: ..." and exit 1; Ctrl-C exits 130. No traceback reaches the user.
3. Outputs are checked with `profiling.validate.check_output_file/check_output_dir` in the
   configuration (or before any work), and an earlier result is replaced only with `--overwrite`.
4. Commands that run torch call `set_torch_threads(target threads)` before any work.

`search`'s options are generated from its configuration dataclasses (`scripts.config_options`),
so an option added to a dataclass field appears on the command line with its help and range.
"""
from __future__ import annotations

import contextlib
import re
import signal
import sys
from types import FrameType
from typing import Callable, Iterator, Mapping

import click

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_BUDGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES_HELP = ("Exit codes: 0 done, 1 runtime error (unreadable input, unreachable device, failed "
                   "measurement), 2 usage error (bad value, unknown name, missing path, output that would be "
                   "replaced), 130 interrupted.")


def flag_for(param: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag a configuration parameter comes from."""
    if flags and param in flags:
        return flags[param]
    return "--" + param.replace("_", "-")


def flags_in(message: str, flags: Mapping[str, str] | None = None) -> str:
    """A library message with the parameters it names in backticks (`overwrite`) shown as flags."""
    known = set(flags or ()) | {"overwrite"}
    return re.sub(r"`([a-z_]+)`", lambda m: flag_for(m.group(1), flags) if m.group(1) in known else m.group(0),
                  message)


def command_flags() -> dict[str, str]:
    """{parameter name: its long flag} of the click command now running (none outside one): the
    parameters a library message may name, as this command spells them (`hosts` -> `--host`)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return {}
    flags = {}
    for p in ctx.command.params:
        longs = [o for o in p.opts if o.startswith("--")] if isinstance(p, click.Option) else []
        if p.name and longs:
            flags[p.name] = longs[0]
    return flags


def error_text(error: BaseException, flags: Mapping[str, str] | None = None) -> str:
    """A library error's message as the user of this command reads it: the parameters it names
    shown as the flags of `flags`, else of the running command's options (`host` -> `--host`)."""
    return flags_in(str(error), {**command_flags(), **(flags or {})})


def fail(message: str, code: int = EXIT_RUNTIME) -> None:
    """Print `error: message` on stderr and exit with `code` (never returns)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def usage_error(message: str) -> None:
    fail(message, EXIT_USAGE)


def exit_interrupted(message: str | None = "interrupted") -> None:
    """Exit 130 after a Ctrl-C the command has handled (printing `error: message`, if given).

    CPython 3.11 notes a KeyboardInterrupt that escaped code run from source text (`exec` of a
    string, as `dataclasses` and `collections.namedtuple` do; some extension modules' init) and,
    under `python -m`, kills itself with SIGINT at exit whatever exit code was asked: a Ctrl-C that
    landed during `import lightgbm` ended as signal 2, not 130. Forgetting that note keeps 130."""
    with contextlib.suppress(Exception):  # another Python keeps the note elsewhere: it exits by SIGINT
        import ctypes
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    if message is not None:
        fail(message, EXIT_INTERRUPTED)
    sys.exit(EXIT_INTERRUPTED)


def _library_errors() -> tuple[type[BaseException], ...]:
    """Every error class the library raises for something the user can fix."""
    classes: list[type[BaseException]] = []
    try:
        from profiling.errors import HwnasError
        classes.append(HwnasError)
    except ImportError:  # before the error root existed: the stages' own classes
        pass
    from predictors.fileformat import PredictorFileError
    from predictors.graph import GraphError
    from predictors.model import PredictorError
    from profiling.errors import ProfilingError
    from profiling.targets import TargetError
    from search.problem import SearchError
    classes += [ProfilingError, TargetError, PredictorError, PredictorFileError, GraphError, SearchError]
    return tuple(classes)


@contextlib.contextmanager
def cli_errors(flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Map library errors to messages and exit codes (module docstring, step 2); the parameters a
    message names are shown as the flags of `flags`, else of the running command's options."""
    from profiling.validate import ConfigError
    flags = {**command_flags(), **(flags or {})}
    with _noting_interrupts() as interrupted:
        try:
            yield
        except ConfigError as e:
            fail(f"{flag_for(e.param, flags)}: {flags_in(e.problem, flags)}", EXIT_USAGE)
        except KeyboardInterrupt:
            exit_interrupted()
        except click.exceptions.Exit:
            raise
        except Exception as e:
            # A Ctrl-C that lands inside an extension module's import leaves it half-registered, and
            # what escapes is that import's error, not KeyboardInterrupt (scipy's HiGHS wrapper:
            # 'ImportError: generic_type: type "ObjSense" is already registered!'): still Ctrl-C.
            if interrupted():
                exit_interrupted()
            if isinstance(e, OSError):  # a file that vanished or a full disk mid-run: say which, no traceback
                where = f" ({e.filename})" if getattr(e, "filename", None) else ""
                fail(f"{e.strerror or e}{where}")
            if isinstance(e, _library_errors()):  # the parameters a message names, as this command's flags
                fail(flags_in(str(e), flags))
            raise


@contextlib.contextmanager
def _noting_interrupts() -> Iterator[Callable[[], bool]]:
    """Within the block, SIGINT is noted before it is handled as before (KeyboardInterrupt); yields
    whether one came. Off the main thread, or under a handler that is not Python's, nothing changes."""
    came: list[bool] = []
    try:
        previous = signal.getsignal(signal.SIGINT)
    except ValueError:
        previous = None
    if not callable(previous):
        yield lambda: False
        return

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        came.append(True)
        previous(signum, frame)  # Python's default raises KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread
        yield lambda: False
        return
    try:
        yield lambda: bool(came)
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:  # a command may have set its own since
            signal.signal(signal.SIGINT, previous)


def set_torch_threads(n: int) -> None:
    """torch uses `n` threads (intra- and inter-op), as the target's latencies were measured with
    `n`; on a shared machine torch's default (every core) slows itself and the neighbours."""
    import torch  # heavy: only the commands that train or export import it
    n = max(1, int(n))
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # settable once per process, before any parallel work
        torch.set_num_interop_threads(n)


def target_threads(target) -> int:
    """The thread count of `target` on this machine (0 in a target means every core)."""
    import os
    return int(target.resolved_threads(os.cpu_count() or 1))


def search_threads(target_name: str | None, predictor: str | None, targets_file: str | None = None) -> int:
    """The thread count of the target a search measures on: `target_name`, else the predictor's own
    target (read from its header), else local-cpu's."""
    from profiling.targets import Target, get_target
    if target_name:
        return target_threads(get_target(target_name, targets_file))
    if predictor:
        from predictors.fileformat import read_predictor_header
        recorded = read_predictor_header(predictor).get("target")
        if recorded:
            return target_threads(Target.from_dict(recorded))
    return target_threads(get_target("local-cpu"))


__all__ = ["search_threads", "EXIT_BUDGET", "EXIT_CODES_HELP", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_RUNTIME", "EXIT_USAGE", "exit_interrupted",
           "cli_errors", "command_flags", "error_text", "fail", "flag_for", "set_torch_threads", "target_threads", "usage_error"]
