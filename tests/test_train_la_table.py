"""The LA experiment's table: mean +/- std over seeds in %, in the form of paper Tables III and VIII."""

from training.la_experiment import format_tables


def _m(v, aps=None):
    return {"mAP": v, "AP50": 2 * v, "AP75": v / 2, "APs": aps, "APm": v, "APl": v}


def test_table_rows_are_mean_and_sample_std_in_percent():
    results = {
        "small_atss": {
            s: {"test": _m(v), "challenging": _m(v / 2)} for s, v in ((0, 0.10), (1, 0.20), (2, 0.30))
        },
        "small_lacls": {s: {"test": _m(0.25, 0.1), "challenging": _m(0.2)} for s in (0, 1, 2)},
    }
    text = format_tables(results, [0, 1, 2])
    lines = text.splitlines()
    assert "| Models | mAP | mAP_50 | mAP_75 | mAP_s | mAP_m | mAP_l |" in lines
    # ATSS test mAP: mean 20.0, sample std 10.0; AP50 doubles; APs undefined -> n/a
    assert "| ATSS | 20.0 ± 10.0 | 40.0 ± 20.0 | 10.0 ± 5.0 | n/a | 20.0 ± 10.0 | 20.0 ± 10.0 |" in lines
    assert (
        "| ATSS+LAcls | 25.0 ± 0.0 | 50.0 ± 0.0 | 12.5 ± 0.0 | 10.0 ± 0.0 | 25.0 ± 0.0 | 25.0 ± 0.0 |"
        in lines
    )
    # second table: challenging subset
    second = text.split("Challenging subset")[1]
    assert "| ATSS | 10.0 ± 5.0 |" in second and "| ATSS+LAcls | 20.0 ± 0.0 |" in second
