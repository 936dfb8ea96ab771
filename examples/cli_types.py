"""argparse types shared by the examples: a bad option is an argparse error naming the option, before any data is
loaded or any model trained (``--epochs 0`` used to fail in the middle of the run with a library message that never
named it).

Example:
    >>> import argparse
    >>> from cli_types import positive_int
    >>> parser = argparse.ArgumentParser()
    >>> _ = parser.add_argument("--epochs", type=positive_int)
    >>> parser.parse_args(["--epochs", "3"]).epochs
    3
"""
import argparse
import contextlib
import math
import os
import sys


def _number(kind, text):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def positive_int(text):
    """An integer >= 1."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def non_negative_int(text):
    """An integer >= 0."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def _float(text, accept, requirement):
    value = _number(float, text)
    if not (math.isfinite(value) and accept(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number {requirement}, got {text}")
    return value


def positive_float(text):
    """A finite number > 0."""
    return _float(text, lambda value: value > 0, "> 0")


def non_negative_float(text):
    """A finite number >= 0."""
    return _float(text, lambda value: value >= 0, ">= 0")


def probability(text):
    """A number in [0, 1)."""
    value = _number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text}")
    return value


def at_least_one(text):
    """A finite number >= 1 (a condition number)."""
    return _float(text, lambda value: value >= 1, ">= 1")


def thread_count(text):
    """An integer from 1 to the most threads cynet takes (``cynet._threading.MAX_THREADS``)."""
    from cynet._threading import MAX_THREADS
    value = positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_THREADS}, got {value}")
    return value


def output_directory(text):
    """A directory to write into: one that exists, or a path with nothing there yet (created by the example)."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    return text


def make_output_directory(path, option):
    """Create ``path`` (and its parents) for the outputs; one that cannot be created (a file on the way, no
    permission) ends the program as a bad option does: one line on stderr naming ``option`` and exit status 2."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        print(f"{os.path.basename(sys.argv[0])}: error: {option}: cannot create {path!r}: {error.strerror or error}",
              file=sys.stderr)
        raise SystemExit(2) from None


@contextlib.contextmanager
def data_errors_exit(option):
    """Within the block, data that is missing, corrupt or cannot be downloaded ends the program as a bad option does:
    one line on stderr naming ``option`` (e.g. "--data") and exit status 2, not a traceback."""
    from cynet.data.cifar10 import CIFAR10FormatError
    try:
        yield
    except (OSError, CIFAR10FormatError) as error:       # FileNotFoundError, ConnectionError, a corrupt archive
        print(f"{os.path.basename(sys.argv[0])}: error: {option}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
