"""argparse types and checks shared by the command-line tools. Each rejects a bad value while the
arguments are parsed, before any model loads, with argparse's one-line error and exit code 2."""
from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

from ..core import EpicConfig
from ..extras import MissingDependency, check_installed
from ..philox import MAX_SEED
from ..validate import check_config, check_int


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def int_in(low: int, high: int | None = None):
    """An integer type accepting ``[low, high]`` (``high`` None: no upper bound)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_int(value, "value", low, high)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return parse


seed = int_in(0, MAX_SEED - 1)


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file {text!r} not found")
    return text


def existing_path(text: str) -> str:
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"{text!r} does not exist")
    return text


def model_path(text: str) -> str:
    """``--model``: a ``.gguf`` file or a Hugging Face model directory (``models.check_model_path``)."""
    from ..models import check_model_path

    existing_path(text)
    try:
        check_model_path(text)
    except FileNotFoundError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def output_file(suffix: str | None = None):
    """A file to write: its folder exists and is writable, it is not a folder, and it ends in ``suffix``."""
    def parse(text: str) -> str:
        path = Path(text)
        if suffix is not None and path.suffix.lower() != suffix:
            raise argparse.ArgumentTypeError(f"writes a {suffix} file; got {text!r}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
        folder = path.parent
        if not folder.is_dir():
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: folder {str(folder)!r} does not exist")
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise argparse.ArgumentTypeError(f"cannot write {text!r}: permission denied")
        return text
    return parse


def regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"not a valid regular expression: {err}") from None
    return text


def check_epic_settings(parser: argparse.ArgumentParser, *, alpha: float = 1.0, horizon: int, rollouts: int,
                        rollout_top_k: int | None, block_size: int = 1) -> None:
    """The library's own check of an EPIC configuration (``validate.check_config``), as a parser error."""
    try:
        check_config(EpicConfig(alpha=alpha, horizon=horizon, rollouts=rollouts, rollout_top_k=rollout_top_k,
                                block_size=block_size))
    except ValueError as err:
        name, _, rest = str(err).partition(" ")          # "horizon must be ...": name the option
        parser.error(f"--{name.replace('_', '-')} {rest}")


def check_plotting(parser: argparse.ArgumentParser, plot) -> None:
    """With ``--plot``, matplotlib must be installed (the ``plot`` extra): said now, not after the decode."""
    if plot:
        try:
            check_installed("matplotlib", extra="plot", purpose="--plot")
        except MissingDependency as err:
            parser.error(str(err))
