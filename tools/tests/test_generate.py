"""pdm run generate: a bad option is an argparse error that names it, before anything runs."""

import pytest
from tiny_attn_tools import generate


@pytest.mark.parametrize(
    "argv,option",
    [
        (["--batch", "0"], "--batch"),
        (["--new-tokens", "1"], "--new-tokens"),  # no decode step: no decode rate
        (["--new-tokens", "1000"], "--new-tokens"),  # past the model's positions
        (["--heads", "3"], "--dims"),
    ],
)
def test_pdm_run_generate_names_a_bad_option(argv, option, capsys):
    with pytest.raises(SystemExit) as info:
        generate.main(argv)
    assert info.value.code == 2 and option in capsys.readouterr().err
