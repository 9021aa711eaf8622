"""Subcommands of ``fairseq-seqkd``: each a few lines over a library function."""
