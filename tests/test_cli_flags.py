"""Library errors name Python parameters; the CLI shows them as its flags, by one table
(``cli.PARAMETER_FLAGS``) that stays in step with the parser."""

from __future__ import annotations

import pytest

from vindex_hub.builder import build_vindex
from vindex_hub.cli import PARAMETER_FLAGS, in_flags, main, parser
from vindex_hub.compat import subcommands
from vindex_hub.errors import UsageError

from vindex_fixtures import SmallVindex


def test_every_mapped_parameter_is_a_flag_of_some_command() -> None:
    helps = " ".join(command.format_help() for command in subcommands(parser()).values())
    missing = [flag for flag in PARAMETER_FLAGS.values() if f"{flag} " not in helps]
    assert not missing


@pytest.mark.parametrize(
    "library,cli",
    [
        ("num_feats=0 must be between 1 and 64", "--num-feats 0 must be between 1 and 64"),
        ("workers must be at least 1, got 0", "--workers must be at least 1, got 0"),
        (
            "try fewer workers or a smaller batch_size",
            "try fewer --workers or a smaller --batch-size",
        ),
        ("pass create_branch=True to create it", "pass --create-branch to create it"),
        ("need source=, the checkpoint", "need --source, the checkpoint"),
        (
            "device=cuda was asked for but torch sees no CUDA device",
            "--device cuda was asked for but torch sees no CUDA device",
        ),
        # ordinary words stay words; parts of longer names and paths are left alone
        ("the source checkpoint's device", "the source checkpoint's device"),
        ("data/num_feats_x/layer_00.parquet", "data/num_feats_x/layer_00.parquet"),
        ("blas_threads must be at least 1", "blas_threads must be at least 1"),
    ],
)
def test_parameters_become_flags(library: str, cli: str) -> None:
    assert in_flags(library) == cli


def test_the_same_error_in_python_and_on_the_command_line(
    small_vindex: SmallVindex, tmp_path, capsys
) -> None:
    with pytest.raises(UsageError, match=r"^batch_size must be at least 1, got 0$"):
        build_vindex(small_vindex.checkpoint, tmp_path / "a", batch_size=0, progress=False)
    argv = ["build", str(small_vindex.checkpoint), "-o", str(tmp_path / "b"), "--batch-size", "0"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        "vindex-hub build: error: --batch-size must be at least 1, got 0"
    )
