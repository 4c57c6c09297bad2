"""The code version a trial records identifies the code wherever it runs: on a cluster the project
arrives without `.git` (cluster.yaml's rsync) or as an installed package, and must record the same
version as the checkout it came from, and another version when one line of code differs."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from sweeper.version import code_version, source_hash

REPO = Path(__file__).resolve().parents[1]


def copy_as_synced(dest: Path) -> Path:
    """The files `ray up` carries to the nodes: the checkout minus .git and what .gitignore names
    (cluster.yaml: rsync_filter .gitignore, rsync_exclude .git)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    assert not (dest / ".git").exists()
    return dest


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "RAY_AUTH_MODE": "disabled", **extra}


def test_version_is_the_package_version_and_a_source_hash():
    version = code_version()
    assert version.startswith("0.1.0+src.") and len(version.split(".")[-1]) == 12


def test_any_change_to_a_module_changes_the_version(tmp_path):
    package = tmp_path / "sweeper"
    shutil.copytree(REPO / "sweeper", package, ignore=shutil.ignore_patterns("__pycache__"))
    before = source_hash(package)
    assert before == source_hash(REPO / "sweeper")
    (package / "__pycache__").mkdir(exist_ok=True)
    (package / "__pycache__" / "x.py").write_text("caches do not count")
    assert source_hash(package) == before
    trial = package / "trial.py"
    trial.write_text(trial.read_text() + "\n# one more line\n")
    assert source_hash(package) != before


def test_a_copy_without_git_records_the_checkouts_version(tmp_path):
    checkout = code_version()
    synced = copy_as_synced(tmp_path / "synced")
    # 1. cluster.yaml's way: `pip install -e .` in the synced tree, i.e. the code imported in place
    r = subprocess.run([sys.executable, "-c", "import sweeper.version as v; print(v.__file__); print(v.code_version())"],
                       capture_output=True, text=True, env=clean_env(PYTHONPATH=str(synced)), cwd=tmp_path, check=True)
    where, version = r.stdout.split()
    assert Path(where).is_relative_to(synced) and version == checkout
    # 2. an installed package (a wheel built from the copy), recording it through a real sweep
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(synced)], check=True, capture_output=True)
    assert not (site / "sweeper" / ".git").exists() and (site / "sweeper" / "version.py").is_file()
    study = tmp_path / "v.py"
    study.write_text(textwrap.dedent("""
        from sweeper import Study
        study = Study(name="v", dataset="digits", axes={"seed": [0]},
                      recipe={"model": "resnet-8-4", "epochs": 1, "augment": "none"})
    """))
    env = clean_env(PYTHONPATH=str(site))
    probe = subprocess.run([sys.executable, "-c", "import sweeper; print(sweeper.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, check=True)
    assert Path(probe.stdout.strip()).is_relative_to(site)
    run = subprocess.run([sys.executable, "-m", "sweeper.cli", "run", str(study), "--store", str(tmp_path / "store"),
                          "--no-figures", "--cpus-per-trial", "1"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    trials = pd.read_parquet(tmp_path / "store" / "v" / "trials")
    assert list(trials["code_version"]) == [checkout]
