"""Every fairseq-seqkd subcommand loads and describes itself."""

from __future__ import annotations

import pytest

from fairseq_seqkd import cli


@pytest.mark.parametrize("name", cli.SUBCOMMANDS)
def test_every_subcommand_loads_and_has_help(name, capsys):
    parser = cli.build_parser(name)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: fairseq-seqkd {name} "), out[:200]
    assert len(out.splitlines()) > 3  # a description and its options, not a bare usage line


def test_an_unknown_subcommand_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["distil"])
    assert exit_.value.code == 2 and "invalid choice: 'distil'" in capsys.readouterr().err
