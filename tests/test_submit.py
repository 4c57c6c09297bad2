"""`sweeper submit`'s own checks before it reaches a cluster. The command end to end (a job on a
real head, its log followed) runs in tests/test_auth.py, on a head with token authentication as
cluster.yaml starts it."""
from conftest import REPO, sweeper_in_process


def test_submit_refuses_a_relative_store():
    r = sweeper_in_process("submit", "studies/quickstart.py", "--address", "http://127.0.0.1:9", "--store",
                           "relative/store", cwd=REPO)
    assert r.returncode == 2 and "--store: must be an absolute path or a URI" in r.stderr
