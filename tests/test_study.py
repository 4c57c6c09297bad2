"""Study files: expansion into trials, quick variants, and load errors."""
import textwrap

import pytest

from sweeper.errors import SweeperError
from sweeper.study import Study, load_study


def study(**kw):
    base = dict(name="s", dataset="digits", axes={"depth": [8, 14], "trainable": ["all", "bn"], "seed": [0, 1]},
                recipe={"epochs": 1, "width": 4})
    return Study(**{**base, **kw})


def test_grid_is_the_cartesian_product_in_order():
    specs = study().specs()
    assert len(specs) == 8
    assert [(s.depth, s.trainable, s.seed) for s in specs[:3]] == [(8, "all", 0), (8, "all", 1), (8, "bn", 0)]
    assert len({s.trial_id for s in specs}) == 8


def test_joint_axes_set_fields_together():
    s = study(axes={"setting": [{"model": "resnet-8-4", "lr": 0.1}, {"model": "resnet-14-4", "lr": 0.05}]})
    assert [(x.depth, x.lr) for x in s.specs()] == [(8, 0.1), (14, 0.05)]


def test_model_shorthand_axis_and_equal_specs_collapse():
    s = study(axes={"model": ["resnet-14", "wrn-14-1"]}, recipe={"epochs": 1})
    assert len(s.specs()) == 1


def test_quick_variant_overrides_and_renames():
    s = study(quick={"axes": {"seed": [0]}, "recipe": {"epochs": 2}})
    q = s.quick_variant()
    assert q.name == "s-quick" and len(q.specs()) == 4 and all(x.epochs == 2 for x in q.specs())


@pytest.mark.parametrize("kw,where", [
    ({"axes": {"depth": []}}, "axes.depth"),
    ({"axes": {"depth": [8, 8]}}, "axes.depth"),
    ({"axes": {"depth": [9]}}, "axes.depth"),
    ({"axes": {"activation": ["relux"]}}, "axes.activation"),
    ({"recipe": {"epochs": 0}}, "recipe.epochs"),
    ({"recipe": {"lr": "x"}}, "recipe.lr"),
    ({"figures": ["fig99"]}, "figures"),
    ({"name": "bad name/"}, "name"),
    ({"experiment": "nope"}, "experiment"),
    ({"resources": {"cpu": -1}}, "resources.cpu"),
    ({"dataset": "mnist"}, "recipe.dataset"),
])
def test_bad_studies_name_the_field(kw, where):
    with pytest.raises(SweeperError) as e:
        study(**kw).specs()
    assert e.value.where == where or (e.value.where or "").startswith(where), e.value


def write(tmp_path, body, name="st.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_load_study_errors(tmp_path):
    with pytest.raises(SweeperError, match="no such study file"):
        load_study(tmp_path / "missing.py")
    with pytest.raises(SweeperError, match="does not parse: line 1"):
        load_study(write(tmp_path, "study = Study(\n"))
    with pytest.raises(SweeperError, match="raises on import: ZeroDivisionError"):
        load_study(write(tmp_path, "x = 1 / 0\n"))
    with pytest.raises(SweeperError, match="defines no study"):
        load_study(write(tmp_path, "x = 1\n"))
    with pytest.raises(SweeperError, match=r"st\.py: axes\.depth: "):
        load_study(write(tmp_path, """
            from sweeper import Study
            study = Study(name="x", dataset="digits", axes={"depth": [9]})
        """))


def test_repo_studies_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parents[1] / "studies").glob("*.py")):
        s = load_study(path)
        assert s.specs(), path
        if s.quick is not None:
            assert load_study(path, quick=True).specs()
