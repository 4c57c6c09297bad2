"""Reliability, input (issue 20): bad input is refused before any work, in one line, exit 2, with
nothing written; nothing a user types can add a crontab line; a study file cannot take over a command.

Classes tried, many cases each through `hypothesis`:
- every numeric option of every command, and every numeric field of every experiment kind and of
  a study, outside its range (NaN, infinities, negatives, absurd sizes);
- control characters in every path and name that reaches a crontab line, a report or a file name;
- stores a newer sweeper wrote, foreign markers, and refusals that must leave no trace;
- study files that exit, loop, print, or hold something else under `study`.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sweeper.cli import build_parser, main
from sweeper.errors import SweeperError
from sweeper.experiments import EXPERIMENTS

CASES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TINY = ("from sweeper import Study\nstudy = Study(name={name!r}, dataset='digits', axes={{'seed': [0]}}, "
        "recipe={{'model': 'resnet-8-4', 'epochs': 1, 'batch_size': 32}})\n")


def write_study(path: Path, name: str = "tiny", body: str = "") -> Path:
    path.write_text(body + TINY.format(name=name))
    return path


def one_line_error(capsys, needle: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert "Traceback" not in err and "internal error" not in err
    return err


# -- numbers -----------------------------------------------------------------------------------------
def numeric_options() -> dict[str, tuple[list[str], str]]:
    """Every numeric option: `command flag` -> (the argv before it, the flag)."""
    from sweeper.checks import numeric_options as walk

    return {key: (key.split()[:-1], key.split()[-1]) for key in walk(build_parser())}


def test_every_numeric_option_has_a_declared_range():
    from sweeper.checks import OPTION_RANGES

    options = numeric_options()
    assert len(options) >= 20
    assert sorted(key for key, (_, flag) in options.items() if flag not in OPTION_RANGES) == []


OUT_OF_RANGE = st.one_of(st.sampled_from(["nan", "-nan", "inf", "-inf", "1e400", "", "x", "1,5", "0x10"]),
                         st.floats(allow_nan=True, allow_infinity=True).map(repr),
                         st.integers(-(2**70), 2**70).map(str))


@CASES
@given(data=st.data())
def test_every_numeric_option_refuses_values_outside_its_range(capsys, data):
    from sweeper.checks import OPTION_RANGES

    key = data.draw(st.sampled_from(sorted(numeric_options())))
    command, flag = numeric_options()[key]
    text = data.draw(OUT_OF_RANGE)
    valid = OPTION_RANGES[flag]
    try:
        value = int(text) if valid.integer else float(text)
        ok = value in valid
    except ValueError:
        ok = False
    if ok:
        return  # a valid value: not this test's business
    argv = [*command, f"{flag}={text}"]
    assert main(argv) == 2
    one_line_error(capsys, flag)


@pytest.mark.parametrize("argv,needle", [
    (["run", "S", "--cpus-per-trial", "nan"], "--cpus-per-trial: must be a finite number greater than 0"),
    (["run", "S", "--cpus-per-trial", "0"], "--cpus-per-trial: must be greater than 0, got 0"),
    (["run", "S", "--cpus-per-trial", "-1"], "--cpus-per-trial: must be greater than 0, got -1"),
    (["run", "S", "--max-failures", "-1"], "--max-failures: must be at least 0, got -1"),
    (["run", "S", "--gpus-per-trial", "inf"], "--gpus-per-trial: must be a finite number at least 0"),
    (["run", "S", "--checkpoint-seconds", "nan"], "--checkpoint-seconds"),
    (["plan", "S", "--efficiency", "nan"], "--efficiency: must be a finite number in (0, 1]"),
])
def test_the_red_teams_options_are_refused_in_one_line(tmp_path, capsys, argv, needle):
    argv = [str(write_study(tmp_path / "s.py")) if a == "S" else a for a in argv]
    assert main([*argv, "--store", str(tmp_path / "store")] if argv[0] == "run" else argv) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "store").exists()


def numeric_fields() -> list[tuple[str, str]]:
    import typing

    out = []
    for kind in EXPERIMENTS:
        for name, t in EXPERIMENTS[kind].spec_type.field_types().items():
            item = typing.get_args(t)[0] if typing.get_origin(t) is tuple else t
            if item in (int, float):
                out.append((kind, name))
    return out


def test_every_numeric_spec_field_has_a_range_and_its_default_is_in_it():
    import dataclasses

    for kind, name in numeric_fields():
        spec_type = EXPERIMENTS[kind].spec_type
        assert name in spec_type.RANGES, f"{kind}.{name} has no range"
        default = {f.name: f.default for f in dataclasses.fields(spec_type)}[name]
        for item in default if isinstance(default, tuple) else (default,):
            assert spec_type.RANGES[name].problem(item) is None, (kind, name, default)


BAD_NUMBERS = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf, 2**64, -(2**64), 2**63, -1, -1e-9, 10**30]),
                        st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**80), 2**80))


@CASES
@given(field=st.sampled_from(numeric_fields()), value=BAD_NUMBERS)
def test_every_numeric_spec_field_refuses_values_outside_its_range(field, value):
    kind, name = field
    spec_type = EXPERIMENTS[kind].spec_type
    valid = spec_type.RANGES[name]
    if value in valid:
        return
    with pytest.raises(SweeperError) as e:
        spec_type.from_values({name: value})
    assert e.value.where.split(":")[0] == name and "\n" not in str(e.value)


@pytest.mark.parametrize("recipe,needle", [
    ({"lr": math.inf}, "recipe.lr: must be a finite number"),
    ({"weight_decay": math.nan}, "recipe.weight_decay: must be a finite number"),
    ({"seed": 2**64}, "recipe.seed: must fit a 64-bit integer"),
    ({"seed": 2**40}, "recipe.seed: must be in [0, 4294967296)"),
    ({"seed": math.nan}, "recipe.seed: expected an integer, got nan"),
    ({"width": 10**20}, "recipe.width: must fit a 64-bit integer"),
])
def test_the_red_teams_spec_values_are_refused_at_plan_time(tmp_path, capsys, recipe, needle):
    study = tmp_path / "s.py"
    study.write_text("import math\nfrom sweeper import Study\nstudy = Study(name='s', dataset='digits', "
                     f"axes={{'trainable': ['bn']}}, recipe={{'model': 'resnet-8-4', **{recipe!r}}})\n"
                     .replace("nan", "math.nan").replace("inf", "math.inf"))
    assert main(["plan", str(study), "--json"]) == 2
    one_line_error(capsys, needle)


@CASES
@given(key=st.sampled_from(["cpu", "gpu"]), value=st.one_of(BAD_NUMBERS, st.just("2"), st.just(None)))
def test_study_resources_refuse_values_outside_their_range(key, value):
    from sweeper.checks import CPUS, GPUS
    from sweeper.study import Study

    valid = CPUS if key == "cpu" else GPUS
    study = Study(name="s", dataset="digits", axes={"seed": [0]}, resources={key: value})
    if value in valid:
        study.validate()
        return
    with pytest.raises(SweeperError, match=f"resources.{key}"):
        study.validate()


@CASES
@given(width=st.one_of(st.integers(65_537, 2**90), st.integers(-(2**90), 0)),
       family=st.sampled_from(["resnet-20-{}", "wrn-14-{}", "mlp-2-{}"]))
def test_params_refuses_absurd_sizes_in_one_line(capsys, width, family):
    model = family.format(width)
    assert main(["params", model]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error" not in err and model in err


# -- control characters: no value ends a crontab line ---------------------------------------------
@pytest.fixture
def fake_crontab(tmp_path, monkeypatch) -> Path:
    table = tmp_path / "crontab.txt"
    table.write_text("0 1 * * * someone-elses-job\n")
    script = tmp_path / "crontab"
    script.write_text(f'#!/bin/sh\ncase "$1" in\n  -l) cat "{table}" ;;\n  -) cat > "{table}" ;;\nesac\n')
    script.chmod(0o755)
    monkeypatch.setenv("SWEEPER_CRONTAB", str(script))
    return table


CONTROL = st.sampled_from(["\n", "\r", "\r\n", "\x00", "\x1b[2J", "\t", "\x0b", "\x0c", "\x85", "\u2028", "\u2029", "\x7f"])
PRINTABLE = st.text(st.characters(max_codepoint=0x2ff, exclude_categories=("Cc", "Cs", "Zl", "Zp"),
                                  exclude_characters="/"), min_size=1, max_size=20)


@CASES
@given(where=st.sampled_from(["--store", "--log", "--data-root", "--address", "SWEEPER_DATA_ROOT"]),
       head=PRINTABLE, control=st.one_of(st.none(), CONTROL), tail=st.sampled_from(["* * * * * touch /tmp/pwned", "x"]))
@example(where="SWEEPER_DATA_ROOT", head="~ÎĴý˟ʫÜú", control="\r", tail="x")  # found by hypothesis: `~name` of no user
@example(where="SWEEPER_DATA_ROOT", head="~nosuchuser", control=None, tail="x")
def test_no_value_can_end_a_crontab_line(tmp_path, monkeypatch, capsys, fake_crontab, where, head, control, tail):
    study = write_study(tmp_path / "s.py")
    value = head + (control + tail if control else "")
    if where in ("--store", "--log", "--data-root"):
        value = str(tmp_path / value)
    fake_crontab.write_text("0 1 * * * someone-elses-job\n")  # afresh for each example
    before = fake_crontab.read_text()
    argv = ["schedule", str(study), "--store", str(tmp_path / "store"), "--at", "02:30", "--install"]
    if where == "SWEEPER_DATA_ROOT":
        if "\x00" in value:
            return  # no environment can hold a NUL
        monkeypatch.setenv(where, value)
    elif where == "--store":
        argv[3] = value
    else:
        argv += [where, value]
    code = main(argv)
    monkeypatch.delenv("SWEEPER_DATA_ROOT", raising=False)
    if control:
        assert code == 2
        one_line_error(capsys, "control character")
        assert fake_crontab.read_text() == before  # nothing installed
        return
    if code == 2:  # refused for another reason (e.g. an address that is not HOST:PORT): one line, nothing installed
        capsys.readouterr()
        assert fake_crontab.read_text() == before
        return
    assert code == 0
    table = fake_crontab.read_text().splitlines()
    assert len(table) == 2 and table[0] == before.strip()  # exactly one line added
    command = table[1].split(maxsplit=5)[5]
    tokens = shlex.split(command.replace("\\%", "%"), comments=True)  # the shell's reading of the line
    follows = {"--store": "--store", "--data-root": "--data-root", "--log": ">>"}
    if where in follows:  # the value comes back whole, as one word
        assert tokens[tokens.index(follows[where]) + 1] == str(Path(value).resolve())
    elif where == "--address":
        assert tokens[tokens.index("--address") + 1] == value


NAMES = st.one_of(st.text(min_size=1, max_size=12),
                  st.builds(str.__add__, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True),
                            st.sampled_from(["", "\n", "\r\n", "\r", " ", "/x", "\t", "\x00", "é"])))


@CASES
@given(name=NAMES)
def test_study_names_are_matched_whole(name):
    import re

    from sweeper.study import Study

    study = Study(name=name, dataset="digits", axes={"seed": [0]})
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) and "\n" not in name:
        study.validate()
    else:
        with pytest.raises(SweeperError, match="^name: "):
            study.validate()


def test_a_study_name_ending_in_a_newline_is_refused(tmp_path, capsys):
    study = write_study(tmp_path / "s.py", name="tiny\n")
    assert main(["plan", str(study)]) == 2
    one_line_error(capsys, "name: must be letters, digits")


@pytest.mark.parametrize("flag", ["--store", "--data-root", "--address"])
def test_run_refuses_control_characters_before_any_work(tmp_path, capsys, flag):
    study = write_study(tmp_path / "s.py")
    bad = str(tmp_path / "x\ny") if flag != "--address" else "host:1\n"
    argv = ["run", str(study), "--store", str(tmp_path / "store"), flag, bad]
    assert main(argv) == 2
    one_line_error(capsys, f"{flag}: has a control character")
    assert sorted(os.listdir(tmp_path)) == ["s.py"]


# -- the store: newer, foreign, and refusals that leave no trace ----------------------------------
@CASES
@given(version=st.integers(2, 10**6))
def test_a_store_of_a_newer_schema_is_never_written(tmp_path_factory, capsys, version):
    folder = tmp_path_factory.mktemp("newer")
    (folder / "_sweeper.json").write_text(json.dumps({"schema_version": version}))
    study = write_study(folder / "s.py")
    assert main(["run", str(study), "--store", str(folder / "store" / "..")]) == 2
    one_line_error(capsys, f"schema version {version}, written by a newer sweeper; this one reads and writes version 1")
    assert sorted(os.listdir(folder)) == ["_sweeper.json", "s.py"]


@CASES
@given(text=st.one_of(st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["", "{}", "[]", "null", '{"schema_version": "1"}', '{"schema_version": true}',
                                       '{"schema_version": 0}', '{"schema_version": -3}', '{"schema_version": 1.5}',
                                       '{"version": 1}', "not json"])))
def test_a_foreign_marker_is_refused_by_its_path(tmp_path_factory, capsys, text):
    folder = tmp_path_factory.mktemp("foreign")
    marker = folder / "_sweeper.json"
    marker.write_bytes(text.encode("latin-1"))
    try:
        parsed = json.loads(text)
        valid = isinstance(parsed, dict) and type(parsed.get("schema_version")) is int and parsed["schema_version"] >= 1
    except ValueError:
        valid = False
    if valid:
        return
    study = write_study(folder / "s.py")
    assert main(["run", str(study), "--store", str(folder)]) == 2
    one_line_error(capsys, f"{marker} is not a sweeper store marker")
    assert sorted(os.listdir(folder)) == ["_sweeper.json", "s.py"] and marker.read_bytes() == text.encode("latin-1")


def test_refusals_after_validation_write_nothing(ray_local, tmp_path, capsys):
    study = write_study(tmp_path / "s.py")
    cifar = tmp_path / "c.py"
    cifar.write_text("from sweeper import Study\nstudy = Study(name='c', dataset='cifar10', axes={'seed': [0]})\n")
    store = tmp_path / "deep" / "store"
    # data missing under the data root
    assert main(["run", str(cifar), "--store", str(store), "--data-root", str(tmp_path / "empty")]) == 2
    # resources this machine's cluster lacks (the check runs on the cluster, after validation)
    assert main(["run", str(study), "--store", str(store), "--cpus-per-trial", "64", "--no-figures"]) == 2
    # a nightly whose study is bad
    assert main(["nightly", str(tmp_path / "missing.py"), "--store", str(store)]) == 2
    capsys.readouterr()
    assert not (tmp_path / "deep").exists()


@pytest.mark.parametrize("value", ["0", "two", "1.5", "-1", "²", " "])
def test_a_bad_local_cpus_is_refused_before_any_work(tmp_path, capsys, monkeypatch, value):
    """$SWEEPER_LOCAL_CPUS, the embedded cluster's CPUs: refused in one line naming it, by `run`,
    `nightly` and `schedule` before the store is touched; blank is unset (all of the machine's)."""
    from sweeper.orchestration.connect import local_cpus

    study = write_study(tmp_path / "s.py")
    store = tmp_path / "store"
    monkeypatch.setenv("SWEEPER_LOCAL_CPUS", value)
    if not value.strip():
        assert local_cpus() is None
        return
    for argv in (["run", str(study), "--store", str(store)], ["nightly", str(study), "--store", str(store)],
                 ["schedule", str(study), "--store", str(store), "--at", "02:30"]):
        assert main(argv) == 2, argv
        assert "SWEEPER_LOCAL_CPUS" in one_line_error(capsys, repr(value))
    assert not store.exists()
    assert main(["run", str(study), "--store", str(store), "--address", "127.0.0.1:9"]) == 2  # a cluster's
    assert "SWEEPER_LOCAL_CPUS" not in capsys.readouterr().err  # own CPUs are not this setting's


@pytest.mark.parametrize("kind", ["loop", "file", "dangling-loop"])
def test_a_store_that_is_a_symlink_loop_or_a_file_is_refused_in_one_line(tmp_path, capsys, kind):
    store = tmp_path / "store"
    if kind == "loop":
        os.symlink(tmp_path / "store", store)
    elif kind == "dangling-loop":
        os.symlink(tmp_path / "b", store)
        os.symlink(store, tmp_path / "b")
    else:
        store.write_text("not a folder")
    study = write_study(tmp_path / "s.py")
    for argv in (["status", str(store)], ["figures", str(store)], ["run", str(study), "--store", str(store)],
                 ["plan", str(study), "--store", str(store)]):
        assert main(argv) == 2, argv
        one_line_error(capsys, "--store")


# -- study files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,needle", [
    ("import sys\nsys.exit(0)\n", "exits on import (sys.exit(0))"),
    ("raise SystemExit(3)\n", "exits on import (sys.exit(3))"),
    ("import sys\nsys.exit()\n", "exits on import (sys.exit(None))"),
    ("while True:\n    pass\n", "still importing after 1 s"),
    ("import time\ntime.sleep(10**6)\n", "still importing after 1 s"),
    ("try:\n    while True: pass\nexcept Exception:\n    pass\n", "still importing after 1 s"),
    ("raise ValueError('a\\nmulti-line\\nmessage')\n", "raises on import: ValueError: a multi-line message"),
])
@pytest.mark.parametrize("command", ["run", "nightly", "plan"])
def test_a_study_file_cannot_end_or_hang_the_command(tmp_path, capsys, monkeypatch, body, needle, command):
    import sweeper.study

    monkeypatch.setattr(sweeper.study, "IMPORT_SECONDS", 1.0)
    study = write_study(tmp_path / "s.py", body=body)
    argv = [command, str(study)] + (["--store", str(tmp_path / "store")] if command != "plan" else [])
    assert main(argv) == 2
    one_line_error(capsys, needle)
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("body", [
    "print('hello from the study')\n",
    "import sys\nsys.stdout.write('{not json')\n",
    "import os\nos.write(1, b'written to fd 1\\n')\n",
])
def test_what_a_study_prints_stays_out_of_plan_json(tmp_path, capfd, body):
    study = write_study(tmp_path / "s.py", body=body)
    assert main(["plan", str(study), "--json"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out)["count"] == 1
    assert err.strip()  # it went to stderr, not lost


@pytest.mark.parametrize("body,needle", [
    ("other = Study(name='other', dataset='digits', axes={'seed': [0]})\nstudy = 42\n", "`study` holds int 42, not a Study"),
    ("base = Study(name='base', dataset='digits', axes={'seed': [0]})\n", "defines no study"),
])
def test_only_the_name_study_is_a_study(tmp_path, capsys, body, needle):
    path = tmp_path / "s.py"
    path.write_text("from sweeper import Study\n" + body)
    assert main(["plan", str(path)]) == 2
    one_line_error(capsys, needle)


def test_a_large_grid_is_expanded_once(tmp_path, capsys, monkeypatch):
    """`plan --json` on a large grid: every spec built once (it was built twice, each time
    re-evaluating the spec's type hints), and the document written row by row."""
    from sweeper.experiments.train.spec import TrainSpec

    study = tmp_path / "grid.py"
    study.write_text("from sweeper import Study\nstudy = Study(name='g', dataset='digits', axes={'seed': "
                     "list(range(50)), 'lr': [0.01 * (i + 1) for i in range(20)]}, recipe={'model': 'resnet-8-4'})\n")
    built = []
    original = TrainSpec.from_values.__func__
    monkeypatch.setattr(TrainSpec, "from_values", classmethod(lambda cls, v: built.append(1) or original(cls, v)))
    assert main(["plan", str(study), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["count"] == len(plan["trials"]) == 1000 and len({t["trial_id"] for t in plan["trials"]}) == 1000
    assert len(built) == 1000


@pytest.mark.parametrize("space", [{"lr": ("uniform", -1.0, 1.0)}, {"momentum": ("uniform", 0.5, 1.5)},
                                   {"seed": ("uniform", -5, 5)}, {"weight_decay": ("uniform", -1e-3, 1e-3)}])
def test_a_search_cannot_sample_outside_a_fields_range(space):
    from sweeper.study import Search, Study

    study = Study(name="s", dataset="digits", axes={"seed": [0]}, search=Search(space=space))
    with pytest.raises(SweeperError, match=f"search.space.{next(iter(space))}: samples outside the field's range"):
        study.specs()


def test_a_missing_package_is_named_in_one_line_not_called_a_bug(tmp_path):
    """An install that lacks one of Ray Tune's own needs (pydantic, which `ray.train` checks for and
    reports through its own ImportError; seen on a hand-built GPU machine) is named in one line, exit
    3, before anything is written; not reported as an internal error."""
    study = write_study(tmp_path / "tiny.py")
    hide = "import sys; sys.modules['pydantic'] = None\nfrom sweeper.cli import main\nsys.exit(main(sys.argv[1:]))"
    r = subprocess.run([sys.executable, "-c", hide, "run", str(study), "--store", str(tmp_path / "store")],
                       capture_output=True, text=True, timeout=300)
    err = r.stderr.strip()
    assert r.returncode == 3, err
    assert len(err.splitlines()) == 1 and "package 'pydantic' is missing" in err, err
    assert "internal error" not in err and "Traceback" not in err
    assert not (tmp_path / "store").exists()


NO_USER = "~nosuchuser-of-sweeper/x"


@pytest.mark.parametrize("argv,where", [
    (["run", "S", "--store", NO_USER], "--store"),
    (["run", "S", "--store", "ST", "--data-root", NO_USER], "--data-root"),
    (["run", "S", "--store", "ST", "--log", f"tensorboard={NO_USER}"], "--log"),
    (["run", "S", "--store", "ST", "--log", f"mlflow={NO_USER}"], "--log"),
    (["schedule", "S", "--store", "ST", "--at", "02:30", "--print", "--log", NO_USER], "--log"),
    (["slurm", "S", "--nodes", "1", "--gpus-per-node", "0", "--cpus-per-node", "2", "--time", "1:00:00",
      "--store", NO_USER, "--print"], "--store"),
    (["slurm", "S", "--nodes", "1", "--gpus-per-node", "0", "--cpus-per-node", "2", "--time", "1:00:00",
      "--store", "ST", "--log-dir", NO_USER, "--print"], "--log-dir"),
    (["schedule", "S", "--store", "ST", "--at", "02:30", "--print"], "SWEEPER_DATA_ROOT"),
])
def test_a_home_of_no_user_is_one_line_naming_the_option(tmp_path, monkeypatch, capsys, argv, where):
    """`~name/...` where no user `name` exists: pathlib raises RuntimeError ("Could not determine
    home directory"), which was an internal error; it is the user's input, refused in one line."""
    study = write_study(tmp_path / "s.py")
    argv = [str(study) if a == "S" else str(tmp_path / "store") if a == "ST" else a for a in argv]
    if where == "SWEEPER_DATA_ROOT":
        monkeypatch.setenv(where, NO_USER)
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = one_line_error(capsys, "'~nosuchuser-of-sweeper' names no user's home folder")
    assert where in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.py"]  # nothing written
