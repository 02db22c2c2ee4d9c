from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.dev.demo import reset_home
from pipelines.storage.settings import get_settings


def test_reset_refuses_a_folder_that_is_not_a_pipelines_home(tmp_path: Path) -> None:
    settings = replace(get_settings(), home=tmp_path)
    (tmp_path / "lake").mkdir()
    (tmp_path / "thesis.tex").write_text("precious")
    with pytest.raises(RuntimeError, match=r"refusing to reset .*thesis\.tex"):
        reset_home(settings)
    assert (tmp_path / "thesis.tex").read_text() == "precious"

    (tmp_path / "thesis.tex").unlink()
    reset_home(settings)
    assert not tmp_path.exists()
