from scripts.plot import moving_average, read_log
import pytest

from utils.errors import UserError


def test_read_log_series(tmp_path):
    log = tmp_path / "run.csv"
    log.write_text("epoch,step,lr,loss,images_per_s,knn_top1\n1,1,0.1,4.0,10,\n1,2,0.2,2.0,10,\n1,2,,,,31.5\n"
                   "2,3,0.3,1.0,10,\n")
    s = read_log(str(log))
    assert s["loss"] == [(1, 4.0), (2, 2.0), (3, 1.0)] and s["lr"] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert s["knn"] == [(1, 31.5)]
    with pytest.raises(UserError, match="not found"):
        read_log(str(tmp_path / "none.csv"))


def test_moving_average():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
