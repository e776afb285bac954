"""convlstm.evaluation.nowcast on hand-worked contingency tables and tiny hand-made rain fields."""
import json
import math
from fractions import Fraction

import pytest
import torch

from convlstm.evaluation.nowcast import (COUNT_NAMES, NowcastScores, contingency, fss, fss_sums, plot_csi_by_lead,
                                         scores)

NAN = math.nan

# (hits a, misses c, false alarms b, correct negatives d) in COUNT_NAMES order -> expected scores, worked by hand.
TABLES = {
    # csi 2/4; pod 2/3; far 1/3; bias 3/3; hss 2(2*4 - 1*1)/(3*5 + 3*5) = 14/30; a_r = 3*3/8, ets (7/8)/(23/8)
    "a2-b1-c1-d4": ((2, 1, 1, 4), dict(csi=1 / 2, pod=2 / 3, far=1 / 3, bias=1.0, hss=7 / 15, ets=7 / 23)),
    # csi 3/6; pod 3/4; far 2/5; bias 5/4; hss 2(30 - 2)/(4*11 + 5*12) = 56/104; a_r = 5*4/16, ets (7/4)/(19/4)
    "a3-b2-c1-d10": ((3, 1, 2, 10), dict(csi=1 / 2, pod=3 / 4, far=2 / 5, bias=5 / 4, hss=7 / 13, ets=7 / 19)),
    # no rain observed and none forecast: every denominator is 0
    "no-rain": ((0, 0, 0, 9), dict(csi=NAN, pod=NAN, far=NAN, bias=NAN, hss=NAN, ets=NAN)),
    # everything correct
    "perfect": ((3, 0, 0, 6), dict(csi=1.0, pod=1.0, far=0.0, bias=1.0, hss=1.0, ets=1.0)),
    # every pixel an event, all forecast: no negatives, so no skill over chance can be measured
    "perfect-all-rain": ((5, 0, 0, 0), dict(csi=1.0, pod=1.0, far=0.0, bias=1.0, hss=NAN, ets=NAN)),
    # all misses: nothing forecast, so far is undefined
    "all-misses": ((0, 4, 0, 5), dict(csi=0.0, pod=0.0, far=NAN, bias=0.0, hss=0.0, ets=0.0)),
    # only false alarms: nothing observed, so pod and bias are undefined
    "false-alarms-only": ((0, 0, 3, 6), dict(csi=0.0, pod=NAN, far=1.0, bias=NAN, hss=0.0, ets=0.0)),
}


def assert_scores(got, expected):
    for name, value in expected.items():
        assert got[name].dtype == torch.float64
        if math.isnan(value):
            assert math.isnan(got[name].item()), name
        else:
            assert got[name].item() == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("table", TABLES, ids=list(TABLES))
def test_scores_hand_tables(table):
    counts, expected = TABLES[table]
    assert_scores(scores(torch.tensor(counts)), expected)


def test_scores_keep_leading_shape():
    counts = torch.tensor([[TABLES["a2-b1-c1-d4"][0], TABLES["no-rain"][0]]] * 3)  # (3, 2, 4)
    result = scores(counts)
    assert all(v.shape == (3, 2) for v in result.values())
    assert result["csi"][2, 0].item() == 0.5 and math.isnan(result["csi"][2, 1].item())


def tiny_fields():
    """1x2x3x3 rain rates with two no-data pixels per frame; counts at 1 mm/h worked by hand below."""
    forecast = torch.tensor([[[0, 2, 1], [0.5, 3, 0], [0, 0, 5]],
                             [[0, 0, 0], [0, 0, 0], [0, 0, 0]]]).unsqueeze(0)
    observed = torch.tensor([[[1, 2, 0], [0, 0, 4], [0, 1, 9]],
                             [[7, 0, 0], [0, 0, 0], [0, 0, 0]]]).unsqueeze(0)
    valid = torch.ones(1, 2, 3, 3, dtype=torch.bool)
    valid[0, 0, 1, 1] = valid[0, 0, 2, 2] = False  # a false alarm and a hit hidden
    valid[0, 1, 0, 0] = valid[0, 1, 2, 2] = False  # a miss and a correct negative hidden
    return forecast, observed, valid


def test_contingency_tiny_fields_with_mask():
    forecast, observed, valid = tiny_fields()
    # Lead 0 at >= 1 mm/h, valid pixels only: hit (0,1); misses (0,0), (1,2), (2,1); false alarm (0,2) (value 1 equals
    # the threshold); negatives (1,0), (2,0). Lead 1: the only rain is masked, 7 valid negatives.
    expected = torch.tensor([[[1, 3, 1, 2]], [[0, 0, 0, 7]]])
    counts = contingency(forecast, observed, (1.0,), valid)
    assert counts.dtype == torch.int64 and counts.device.type == "cpu"
    assert torch.equal(counts, expected)
    assert torch.equal(contingency(forecast.unsqueeze(2), observed.unsqueeze(2), (1.0,), valid.unsqueeze(2)), expected)
    # Whatever the masked pixels hold changes no count.
    scrambled_f, scrambled_o = forecast.clone(), observed.clone()
    scrambled_f[~valid], scrambled_o[~valid] = 50.0, 0.0
    assert torch.equal(contingency(scrambled_f, scrambled_o, (1.0,), valid), expected)
    # Without the mask the hidden pixels count: lead 0 gains a hit and a false alarm, lead 1 a miss and a negative.
    assert torch.equal(contingency(forecast, observed, (1.0,)), torch.tensor([[[2, 3, 2, 2]], [[0, 1, 0, 8]]]))
    assert COUNT_NAMES == ("hits", "misses", "false_alarms", "correct_negatives")


def test_event_is_value_at_or_above_threshold():
    below = torch.nextafter(torch.tensor(2.0), torch.tensor(0.0)).item()
    forecast = torch.tensor([2.0, below, 2.0, below]).reshape(1, 1, 1, 4)
    observed = torch.tensor([2.0, 2.0, below, below]).reshape(1, 1, 1, 4)
    assert contingency(forecast, observed, (2.0,)).tolist() == [[[1, 1, 1, 1]]]


def random_fields(seed, b=3, t=2, h=7, w=5):
    g = torch.Generator().manual_seed(seed)
    forecast = torch.rand(b, t, h, w, generator=g) * 12
    observed = torch.rand(b, t, h, w, generator=g) * 12
    valid = torch.rand(b, t, h, w, generator=g) > 0.2
    return forecast, observed, valid


def test_batches_add_up_to_the_concatenation():
    first, second = random_fields(0), random_fields(1, b=2)
    whole = [torch.cat([x, y]) for x, y in zip(first, second)]
    split, joined = NowcastScores((0.5, 2.0, 5.0)), NowcastScores((0.5, 2.0, 5.0))
    split.update(*first)
    split.update(*second)
    joined.update(*whole)
    assert torch.equal(split.counts, joined.counts)
    torch.testing.assert_close(split.fss_sums, joined.fss_sums, rtol=1e-12, atol=1e-12)
    assert split.result()["by_lead"]["csi"] == joined.result()["by_lead"]["csi"]  # the same counts exactly
    with pytest.raises(ValueError, match="lead times"):
        split.update(*random_fields(2, t=3))


def test_fss_window_1_by_hand():
    # 3 forecast events, 2 observed, 1 shared: sum (Pf - Po)^2 = 3 (each unshared event), sum Pf^2 + Po^2 = 3 + 2.
    forecast = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).reshape(1, 1, 2, 3)
    observed = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).reshape(1, 1, 2, 3)
    sums = fss_sums(forecast, observed, (0.5,), (1,))
    assert sums.tolist() == [[[[3.0, 5.0]]]]
    assert fss(sums).item() == pytest.approx(1 - 3 / 5)


def test_fss_window_1_is_2a_over_2a_b_c():
    # At window 1 the fractions are the event indicators: FSS = 2 hits / (2 hits + misses + false alarms).
    forecast, observed, valid = random_fields(3)
    counts = contingency(forecast, observed, (2.0, 8.0), valid).double()
    hits, misses, false_alarms = counts[..., 0], counts[..., 1], counts[..., 2]
    expected = 2 * hits / (2 * hits + misses + false_alarms)
    torch.testing.assert_close(fss(fss_sums(forecast, observed, (2.0, 8.0), (1,), valid))[..., 0], expected)


def test_fss_identical_fields_score_1():
    forecast, _, valid = random_fields(4)
    result = fss(fss_sums(forecast, forecast, (0.5, 5.0, 11.0), (1, 5, 9), valid))
    torch.testing.assert_close(result, torch.ones_like(result))
    assert math.isnan(fss(fss_sums(forecast, forecast, (100.0,), (1, 5))).flatten()[0].item())  # no event anywhere


def test_fss_displaced_cell():
    # One rain cell, forecast one pixel to the left. Window 1: no shared event, FSS 0. Window 5, far from the edges:
    # each field has 25 pixels at fraction 1/25, 20 of them shared, so FSS = 1 - (10/625) / (50/625) = 0.8.
    forecast, observed = torch.zeros(1, 1, 11, 11), torch.zeros(1, 1, 11, 11)
    forecast[0, 0, 5, 5] = observed[0, 0, 5, 6] = 3.0
    result = fss(fss_sums(forecast, observed, (1.0,), (1, 5)))[0, 0]
    assert result[0].item() == 0.0
    assert result[1].item() == pytest.approx(0.8, abs=1e-12)


def test_fss_window_cut_by_the_frame_edge():
    # 3x3 frame, window 3: forecast event at (0, 0), observed at (0, 1). A fraction is events / pixels of the window
    # inside the frame (4 at a corner, 6 at an edge, 9 in the centre). Pf: 1/4 (0,0), 1/6 (0,1), 1/6 (1,0), 1/9 (1,1);
    # Po the same plus 1/4 at (0,2) and 1/6 at (1,2).
    forecast, observed = torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3)
    forecast[0, 0, 0, 0] = observed[0, 0, 0, 1] = 1.0
    f = Fraction
    numerator = f(1, 16) + f(1, 36)
    denominator = (f(1, 16) + 2 * f(1, 36) + f(1, 81)) + (2 * f(1, 16) + 3 * f(1, 36) + f(1, 81))
    assert fss(fss_sums(forecast, observed, (0.5,), (3,))).item() == pytest.approx(float(1 - numerator / denominator))


def test_fss_masked_pixels_are_cut_like_the_frame_edge():
    # Masking the two left columns gives the scores of the frames cropped to the other columns, whatever the masked
    # pixels hold: they count neither as events nor in the window's pixel count.
    forecast, observed, _ = random_fields(5, h=6, w=7)
    valid = torch.ones_like(forecast, dtype=torch.bool)
    valid[..., :2] = False
    cropped = fss_sums(forecast[..., 2:], observed[..., 2:], (2.0, 6.0), (1, 3, 5))
    torch.testing.assert_close(fss_sums(forecast, observed, (2.0, 6.0), (1, 3, 5), valid), cropped)
    equal_there = observed.clone()
    equal_there[..., :2] = forecast[..., :2]
    torch.testing.assert_close(fss_sums(forecast, equal_there, (2.0, 6.0), (1, 3, 5), valid), cropped)
    assert torch.equal(contingency(forecast, equal_there, (2.0, 6.0), valid),
                       contingency(forecast[..., 2:], observed[..., 2:], (2.0, 6.0)))
    with pytest.raises(ValueError, match="odd"):
        fss_sums(forecast, observed, (2.0,), (4,))


def test_csi_m_skips_undefined_thresholds_and_result_is_json():
    # At >= 0.5: hit, 2 false alarms, miss -> CSI 1/4. At >= 2: hit, false alarm -> CSI 1/2. At >= 100 nothing: NaN.
    forecast = torch.tensor([3.0, 1.0, 0.0, 3.0]).reshape(1, 1, 1, 4)
    observed = torch.tensor([3.0, 0.0, 1.0, 0.0]).reshape(1, 1, 1, 4)
    accumulator = NowcastScores((0.5, 2.0, 100.0), windows=(1, 3))
    accumulator.update(forecast, observed)
    result = accumulator.result()
    assert result["by_lead"]["csi"] == [[0.25, 0.5, None]]
    assert result["all_leads"]["csi"] == [0.25, 0.5, None]
    assert result["csi_m"] == {"by_lead": [0.375], "all_leads": 0.375}
    assert result["counts"] == [[[1, 1, 2, 0], [1, 0, 1, 2], [0, 0, 0, 4]]]
    assert result["by_lead"]["fss"][0][2] == [None, None] and len(result["all_leads"]["fss"]) == 3
    assert set(result["by_lead"]) == set(result["all_leads"]) == {"csi", "pod", "far", "bias", "hss", "ets", "fss"}
    assert json.loads(json.dumps(result, allow_nan=False)) == result

    dry = NowcastScores((0.5, 2.0))
    dry.update(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))
    assert dry.result()["csi_m"] == {"by_lead": [None, None, None], "all_leads": None}
    json.dumps(dry.result(), allow_nan=False)


def test_all_leads_sums_counts_before_scoring():
    # Lead 0 perfect with 1 hit, lead 1 with 3 misses: per-lead CSI 1 and 0, all leads 1/4 (not their mean 1/2).
    forecast = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).reshape(1, 2, 1, 4)
    observed = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]]).reshape(1, 2, 1, 4)
    accumulator = NowcastScores((0.5,), windows=(1,))
    accumulator.update(forecast, observed)
    result = accumulator.result()
    assert result["by_lead"]["csi"] == [[1.0], [0.0]] and result["all_leads"]["csi"] == [0.25]


def test_plot_csi_by_lead_writes_png(tmp_path):
    forecast, observed, valid = random_fields(6, t=4)
    model, persistence = NowcastScores((0.5, 5.0, 100.0), (1,)), NowcastScores((0.5, 5.0, 100.0), (1,))
    model.update(forecast, observed, valid)
    persistence.update(forecast[:, :1].expand_as(observed), observed, valid)
    path = tmp_path / "csi.png"
    plot_csi_by_lead({"model": model.result(), "persistence": persistence.result()}, path, lead_minutes=6)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
