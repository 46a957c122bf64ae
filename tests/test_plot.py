import pytest

from scripts.plot import read_log
from utils.errors import UserError


def test_read_log_aggregates_per_epoch(tmp_path):
    log = tmp_path / "run.csv"
    log.write_text("epoch,step,lr,loss,images_per_s,knn_top1\n1,1,0.1,4.0,10,\n1,2,0.2,2.0,10,\n1,2,,,,31.5\n"
                   "2,3,0.3,1.0,10,\n")
    s = read_log(str(log))
    assert s["loss"] == [(1, 3.0), (2, 1.0)] and s["lr"] == [(1, 0.2), (2, 0.3)] and s["knn"] == [(1, 31.5)]
    with pytest.raises(UserError, match="not found"):
        read_log(str(tmp_path / "none.csv"))
