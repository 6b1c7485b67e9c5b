"""The report's SVG charts: well-formed, accessible, escaped, drawn where the numbers say, and empty without data."""

import copy
import re
import xml.etree.ElementTree as ET

import pytest

from auditor.report import charts
from auditor.report.charts import anomaly_chart, asr_chart, per_class_accuracy_chart

NS = "{http://www.w3.org/2000/svg}"
NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def demo_result() -> dict:
    """The shape of a backdoored demo run (generative scan, defense applied and repaired), numbers abridged."""
    before = [0.8621, 0.9828, 0.8552, 0.8828, 0.8414, 0.9828, 0.7138, 0.9724, 0.9793, 0.969]
    after = [0.8586, 0.9793, 0.8448, 0.8759, 0.8207, 0.9793, 0.7069, 0.9655, 0.9379, 0.9724]
    return {
        "model": {"class_names": list(NAMES)},
        "config": {"anomaly_threshold": 2.5, "nc_alone_threshold": 6.0, "max_asr": 0.05},
        "scan": {"method": "generative", "flagged_classes": [7, 8], "suspected_classes": [],
                 "anomaly_index": [-0.053, -0.111, -0.868, -1.184, -0.674, 0.0, 1.212, 7.065, 3.301, 0.015],
                 "after": {"flagged_classes": [],
                           "anomaly_index": [-0.56, 0.0, -3.544, -3.857, -1.267, 0.674, 1.987, -4.556, 0.443, 0.008]}},
        "metrics": {
            "before": {"c_acc": 0.9041, "per_class_acc": before, "asr": 0.9992, "asr_trigger": "known", "target": 7},
            "after_edit": {"c_acc": 0.8941, "per_class_acc": after, "asr": 0.0042},
            "after": {"c_acc": 0.8941, "per_class_acc": after, "asr": 0.0042, "asr_trigger": "known", "target": 7},
        },
    }


def small_result(**scan) -> dict:
    """Three classes under a Neural Cleanse scan, no defense."""
    return {"model": {"class_names": ["a", "b", "c"]}, "config": {"anomaly_threshold": 2.5, "max_asr": 0.05},
            "scan": {"method": "neural-cleanse", "flagged_classes": [2], "suspected_classes": [1],
                     "anomaly_index": [-2.0, 1.0, 5.0], **scan},
            "metrics": {"before": {"per_class_acc": [0.9, 0.8, 0.5], "asr": 0.6, "asr_trigger": "recovered",
                                   "target": 2}, "after": None}}


def svg_of(figure: str) -> ET.Element:
    assert figure.startswith('<figure class="chart">') and figure.endswith("</figure>")
    return ET.fromstring(figure[figure.index("<svg"):figure.index("</svg>") + len("</svg>")])


def texts(svg: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in svg.iter(NS + "text")]


def line(svg: ET.Element, role: str) -> list[ET.Element]:
    return [e for e in svg.iter(NS + "line") if e.get("data-role") == role]


def bars(svg: ET.Element, series: str) -> list[ET.Element]:
    return [e for e in svg.iter(NS + "rect") if e.get("data-series") == series]


def luminance(colour: str) -> float:
    channels = [int(colour.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)] if len(colour) == 7 else \
        [int(c * 2, 16) / 255 for c in colour.lstrip("#")]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


CHARTS = [anomaly_chart, per_class_accuracy_chart, asr_chart]


@pytest.mark.parametrize("chart", CHARTS)
@pytest.mark.parametrize("make", [demo_result, small_result])
def test_chart_is_an_accessible_scalable_svg(chart, make):
    figure = chart(make())
    svg = svg_of(figure)
    assert svg.get("role") == "img" and svg.get("viewBox") and svg.get("width") == "100%" and "max-width" in svg.get("style")
    title = svg.find(NS + "title")
    assert title is not None and title.get("id") == svg.get("aria-labelledby") and title.text.strip()
    desc = svg.find(NS + "desc")
    assert desc is not None and desc.get("id") == svg.get("aria-describedby") and len(desc.text) > 40
    assert re.search(r"<figcaption>[^<]{20,}</figcaption>", figure)
    assert "<script" not in figure.lower() and "href=\"http" not in figure  # nothing runs, nothing is fetched
    root_size = float(svg.get("font-size"))
    for element in svg.iter():
        if element.tag in (NS + "text", NS + "tspan"):
            assert float(element.get("font-size") or root_size) >= 11
            fill = element.get("fill") or svg.get("fill")
            assert (1.05) / (luminance(fill) + 0.05) >= 4.5, fill  # WCAG AA on white


def test_the_three_charts_have_distinct_ids():
    ids = [e.get("id") for c in CHARTS for e in svg_of(c(demo_result())).iter() if e.get("id")]
    assert len(ids) == len(set(ids)) >= 6


def test_negative_index_is_drawn_left_of_the_zero_axis():
    svg = svg_of(anomaly_chart(small_result()))
    zero = float(line(svg, "zero")[0].get("x1"))
    negative, small, big = bars(svg, "before")
    assert float(negative.get("x")) < zero and float(negative.get("x")) + float(negative.get("width")) == pytest.approx(zero)
    assert float(small.get("x")) == pytest.approx(zero)
    assert float(big.get("width")) == pytest.approx(5 * float(small.get("width")), rel=0.02)
    assert "\u22122.00" in texts(svg) and "1.00 suspected" in texts(svg) and "5.00 flagged" in texts(svg)


def test_threshold_lines_sit_at_their_values():
    svg = svg_of(anomaly_chart(small_result()))
    zero = float(line(svg, "zero")[0].get("x1"))
    big = bars(svg, "before")[2]  # index 5.0: 2.5 lies halfway along it
    (threshold,) = line(svg, "threshold")
    assert float(threshold.get("x1")) == pytest.approx(zero + float(big.get("width")) / 2, abs=0.2)
    assert "threshold 2.50" in texts(svg) and "flags alone" not in " ".join(texts(svg))  # NC has no second line

    svg = svg_of(anomaly_chart(demo_result()))
    sneaker = bars(svg, "before")[7]  # 7.065
    scale = float(sneaker.get("width")) / 7.065
    xs = {float(e.get("data-value")): float(e.get("x1")) for e in line(svg, "threshold")}
    zero = float(line(svg, "zero")[0].get("x1"))
    assert xs == {2.5: pytest.approx(zero + 2.5 * scale, abs=0.2), 6.0: pytest.approx(zero + 6.0 * scale, abs=0.2)}
    assert "flags alone 6.00" in texts(svg)


def test_flagged_classes_and_after_stage_are_drawn():
    svg = svg_of(anomaly_chart(demo_result()))
    before = bars(svg, "before")
    assert [b.get("fill") for b in before].count(charts.ALARM) == 2 and before[7].get("fill") == charts.ALARM
    assert "7.07 flagged" in texts(svg) and "3.30 flagged" in texts(svg)
    after = bars(svg, "after")
    assert len(after) == 10 and float(after[7].get("x")) < float(line(svg, "zero")[0].get("x1"))  # -4.556 after repair
    assert "after \u22124.56" in texts(svg)
    assert not bars(svg_of(anomaly_chart(small_result())), "after")


def test_class_names_are_escaped():
    result = small_result()
    result["model"]["class_names"] = ['<script>alert("x")</script>', "b&\x00c", "</svg><img src=x onerror=alert(1)>"]
    for chart in (anomaly_chart, per_class_accuracy_chart):
        figure = chart(result)
        assert "<script" not in figure and "<img" not in figure and "\x00" not in figure
        svg = svg_of(figure)
        assert any(t.startswith('0 (<script>alert("x")') for t in texts(svg))  # shown as text, parsed back
        assert "b&c" in svg.find(NS + "desc").text
    result["metrics"]["before"]["target"] = 0
    assert "<script" not in asr_chart(result) and "&lt;script&gt;" in asr_chart(result)


def test_missing_data_gives_no_chart():
    for chart in CHARTS:
        assert chart({}) == ""
        assert chart({"scan": None, "metrics": {"before": None, "after": None}, "config": {}, "model": {}}) == ""
        assert chart({"metrics": {"before": {"error": "no data"}}, "scan": {"margins": [1.0, 2.0], "p_value": 0.3}}) == ""
    no_trigger = demo_result()
    no_trigger["metrics"] = {"before": {"per_class_acc": [0.9] * 10, "asr": None, "asr_trigger": None, "target": None},
                             "after": None}
    assert asr_chart(no_trigger) == "" and per_class_accuracy_chart(no_trigger) != ""
    nothing = small_result(anomaly_index=[None, None, None])
    assert anomaly_chart(nothing) == ""


def test_none_accuracy_draws_no_bar_and_says_na():
    result = demo_result()
    result["metrics"]["before"]["per_class_acc"][3] = None
    del result["metrics"]["after_edit"]
    result["metrics"]["after"]["per_class_acc"] = [None] * 10
    svg = svg_of(per_class_accuracy_chart(result))
    assert len(bars(svg, "before")) == 9 and not bars(svg, "after_edit") and not bars(svg, "after")
    assert texts(svg).count("n/a") == 11 and "after the defense's edit" not in texts(svg)
    result["metrics"]["after"] = None  # only the delivered model was measured
    assert "after repair" not in texts(svg_of(per_class_accuracy_chart(result)))


def test_per_class_accuracy_marks_the_target_and_prints_values():
    svg = svg_of(per_class_accuracy_chart(demo_result()))
    assert "7 (Sneaker) \u00b7 target" in texts(svg) and "8 (Bag) \u00b7 flagged" in texts(svg)
    assert {"97.2%", "96.5%", "93.8%"} <= set(texts(svg))
    assert len(bars(svg, "before")) == len(bars(svg, "after_edit")) == len(bars(svg, "after")) == 10
    zero = float(line(svg, "zero")[0].get("x1"))
    shirt, trouser = bars(svg, "before")[6], bars(svg, "before")[1]  # 71.38% and 98.28%: lengths in that ratio
    assert float(shirt.get("width")) / float(trouser.get("width")) == pytest.approx(0.7138 / 0.9828, rel=0.01)
    assert float(shirt.get("x")) == pytest.approx(zero)


def test_asr_chart_prints_values_trigger_and_limit():
    svg = svg_of(asr_chart(demo_result()))
    words = texts(svg)
    assert "99.9% \u00b7 above limit" in words and words.count("0.4% \u00b7 within limit") == 2
    assert sum("true ASR, known trigger" in w for w in words) == 3 and "--max-asr 5.0%" in words
    delivered = bars(svg, "before")[0]
    (limit,) = line(svg, "threshold")
    x0 = float(delivered.get("x"))
    assert float(limit.get("x1")) == pytest.approx(x0 + float(delivered.get("width")) * 0.05 / 0.9992, abs=0.2)
    assert "target class 7 (Sneaker)" in svg.find(NS + "title").text

    svg = svg_of(asr_chart(small_result()))  # a recovered trigger: an estimate, and only the delivered model
    assert any("estimate, recovered trigger" in w for w in texts(svg)) and len(bars(svg, "before")) == 1
    assert "estimated" in svg.find(NS + "desc").text and not bars(svg, "after")


def test_big_label_sets_keep_the_flagged_classes_and_stay_short():
    result = demo_result()
    n = 1000
    result["model"]["class_names"] = [f"class{c}" for c in range(n)]
    result["scan"]["anomaly_index"] = [0.01 * (c % 97) for c in range(n)]
    result["scan"]["anomaly_index"][400] = -3.0
    result["scan"]["flagged_classes"] = [400]
    del result["scan"]["after"]
    for stage in ("before", "after_edit", "after"):
        result["metrics"][stage]["per_class_acc"] = [0.9] * n
    result["metrics"]["after"]["per_class_acc"][123] = 0.2  # the one class repair broke must be shown
    figure = anomaly_chart(result)
    svg = svg_of(figure)
    shown = {int(b.get("data-cls")) for b in bars(svg, "before")}
    assert len(shown) == charts.MAX_ROWS and 400 in shown and 96 in shown and "Showing 30 of 1000" in figure
    shown = {int(b.get("data-cls")) for b in bars(svg_of(per_class_accuracy_chart(result)), "after")}
    assert len(shown) == charts.MAX_ROWS and {7, 123, 400} <= shown


def test_does_not_change_the_result():
    result = demo_result()
    kept = copy.deepcopy(result)
    for chart in CHARTS:
        chart(result)
    assert result == kept
