"""The dense frontier (`leantrain.harness.frontier`): dense trained for less (fewer epochs, a
smaller network) as the bar every speed-up is judged against, in the tables, targets, story,
headline and plots."""

from __future__ import annotations

import pytest

from leantrain.harness.frontier import build_frontiers, frontier_of
from leantrain.harness.report import load_rows, markdown_table, summarize, write_report
from leantrain.harness.story import headline, story
from leantrain.harness.targets import check_targets, targets_tables
from test_report import ENV, _budgeted, _row, _write  # the report tests' row builders


def _paper(label, method, seed, acc, train_s, model="resnet32", budget=None, **kw):
    r = _row(label, method, seed, acc, train_s, model=model, **kw)
    r["suite"] = "paper"
    r["key"] = r["key"].replace("s|", "paper|")
    return _budgeted(r, budget) if budget is not None else r


def _frontier_rows():
    """ResNet-32 dense 90% in 10 s; at 0.3 of the epochs 80% in 3 s, at 0.45 79% (no better
    than 0.3: off the envelope), at 0.6 86%; ResNet-20 84% in 5 s with fewer FLOPs (140)."""
    return [
        _paper("dense", "none", 0, 0.90, 10.0, train=300.0),
        _paper("dense-b0.3", "none", 0, 0.80, 3.0, budget=0.3, train=90.0),
        _paper("dense-b0.45", "none", 0, 0.79, 4.5, budget=0.45, train=135.0),
        _paper("dense-b0.6", "none", 0, 0.86, 6.0, budget=0.6, train=180.0),
        _paper("dense", "none", 0, 0.84, 5.0, model="resnet20", train=140.0),
    ]


@pytest.fixture
def summaries(tmp_path):
    return summarize(load_rows([_write(tmp_path / "paper-cpu2.jsonl", _frontier_rows())]))


def _resnet32_frontier(summaries):
    [dense] = [s for s in summaries if s.model == "resnet32" and s.label == "dense"]
    return frontier_of(dense, build_frontiers(summaries))


def test_the_envelope_keeps_the_points_no_faster_point_beats(summaries) -> None:
    frontier = _resnet32_frontier(summaries)
    assert frontier is not None and len(frontier.points) == 5
    assert [p.name("resnet32") for p in frontier.envelope("time")] == [
        "dense-b0.3", "resnet20/dense", "dense-b0.6", "dense"]
    # on FLOPs the smaller network's 140 TFLOPs come before 0.6 of ResNet-32's 180
    assert [p.name("resnet32") for p in frontier.envelope("flops")] == [
        "dense-b0.3", "resnet20/dense", "dense-b0.6", "dense"]


def test_accuracy_between_points_is_linear_and_unknown_below_the_fastest(summaries) -> None:
    frontier = _resnet32_frontier(summaries)
    assert frontier.accuracy_at("time", 0.55) == pytest.approx(85.0)  # 84 → 86 over 0.5 → 0.6
    assert frontier.accuracy_at("time", 0.3) == pytest.approx(80.0)
    assert frontier.accuracy_at("time", 0.45) == pytest.approx(83.0)  # 80 → 84, not 79
    assert frontier.accuracy_at("time", 1.5) == pytest.approx(90.0)  # one can always stop
    assert frontier.accuracy_at("time", 0.2) is None
    assert frontier.accuracy_at("flops", 175e-12) == pytest.approx(85.75)  # 84 → 86, 140 → 180


def test_a_point_under_the_line_between_two_others_does_not_lower_the_frontier(
        tmp_path) -> None:
    """ResNet-20 at 0.6 of its epochs, at 0.58× and 85%: more accurate than every faster point,
    but under the line from ResNet-20 (0.5×, 84%) to ResNet-32 at 0.6 of its epochs (0.6×, 86%),
    which reaches 85.6% there. Linear through it, the frontier would fall from 85.0 to 84.6 at
    0.55×: a dense run added would have made the bar easier."""
    rows = [*_frontier_rows(),
            _paper("dense-b0.6", "none", 0, 0.85, 5.8, model="resnet20", budget=0.6,
                   train=100.0)]
    frontier = _resnet32_frontier(summarize(load_rows([_write(tmp_path / "p.jsonl", rows)])))
    assert [p.name("resnet32") for p in frontier.envelope("time")] == [
        "dense-b0.3", "resnet20/dense", "dense-b0.6", "dense"]
    assert frontier.accuracy_at("time", 0.55) == pytest.approx(85.0)
    # on FLOPs it is the cheapest network beyond 0.3 of ResNet-32's and stays on the envelope
    assert "resnet20/dense-b0.6" in [p.name("resnet32") for p in frontier.envelope("flops")]


def test_a_smaller_network_is_timed_against_this_models_dense_on_its_own_machine(
        tmp_path) -> None:
    fast = {**ENV, "cpu": "Fast CPU"}
    rows = [
        _paper("dense", "none", 0, 0.90, 10.0),
        _paper("dense", "none", 1, 0.90, 4.0, env=fast),
        _paper("dense", "none", 0, 0.84, 5.0, model="resnet20"),  # 0.5 on the slow machine
        _paper("dense", "none", 1, 0.84, 3.0, model="resnet20", env=fast),  # 0.75 on the fast
    ]
    summaries = summarize(load_rows([_write(tmp_path / "r.jsonl", rows)]))
    frontier = _resnet32_frontier(summaries)
    [small] = [p for p in frontier.points if p.summary.model == "resnet20"]
    assert small.time_ratio == pytest.approx(0.625)
    # ResNet-20's own frontier measures ResNet-32 against ResNet-20's dense: 10/5 and 4/3
    resnet20 = frontier_of(small.summary, build_frontiers(summaries))
    [big] = [p for p in resnet20.points if p.summary.model == "resnet32"]
    assert big.time_ratio == pytest.approx((2.0 + 4 / 3) / 2)


def test_each_method_row_says_how_far_above_or_below_the_frontier_it_lies(tmp_path) -> None:
    rows = [*_frontier_rows(),
            _paper("ld", "learndrop", 0, 0.86, 5.5), _paper("ld", "learndrop", 1, 0.86, 5.5),
            _paper("dcp", "dcp", 0, 0.80, 7.0),
            _paper("fast", "learndrop", 0, 0.70, 2.0)]
    summaries = summarize(load_rows([_write(tmp_path / "r.jsonl", rows)]))
    by = {(s.model, s.label): s for s in summaries}
    frontier = _resnet32_frontier(summaries)
    assert frontier.distance(by["resnet32", "ld"]) == pytest.approx(1.0)  # 86 vs 85 at 0.55×
    assert frontier.distance(by["resnet32", "dcp"]) == pytest.approx(80 - (86 + 0.25 * 4))
    assert frontier.distance(by["resnet32", "fast"]) is None
    table = markdown_table([s for s in summaries if s.model == "resnet32"])
    header, _, *lines = table.splitlines()
    names = [c.strip() for c in header.split("|")]
    column = names.index("vs dense frontier, same time / same FLOPs")
    cells = {line.split("|")[3].strip(): line.split("|")[column].strip() for line in lines}
    assert cells["dense-b0.6"] == "·"  # a point of the frontier itself
    assert cells["ld"].startswith("+1.00 / ")
    assert cells["fast"].startswith("faster than all")
    short = markdown_table(summaries, headline=True)
    assert short.splitlines()[0].endswith("| vs dense frontier, same time |")


def test_targets_judge_learndrop_and_dcp_against_the_frontier(tmp_path) -> None:
    rows = [*_frontier_rows(),
            _paper("ld", "learndrop", 0, 0.86, 5.5), _paper("ld", "learndrop", 1, 0.86, 5.5),
            _paper("ld-1seed", "learndrop", 0, 0.90, 5.5),
            _paper("dcp", "dcp", 0, 0.80, 7.0), _paper("dcp", "dcp", 1, 0.80, 7.0),
            _paper("fast", "learndrop", 0, 0.70, 2.0), _paper("fast", "learndrop", 1, 0.7, 2.0)]
    for r in rows:
        r["config"]["method_args"] = {"dcp": {"p": 0.3}} if r["method"] == "dcp" else {}
    checks = [c for c in check_targets(summarize(load_rows([_write(tmp_path / "r.jsonl", rows)])))
              if "frontier" in c.column]
    by = {c.where.rsplit(" / ", 1)[1]: c for c in checks}
    assert by["ld"].measured == "+1.00 at 0.55×" and by["ld"].met is True  # ≥ +0.5
    assert by["ld-1seed"].met is None  # one seed: not judged
    assert by["dcp"].measured == "-7.00 at 0.70×" and by["dcp"].met is False
    assert by["fast"].met is None
    assert "faster than its fastest point (0.30×)" in by["fast"].measured
    tables = targets_tables(checks)
    assert "vs dense frontier at its time (≥ +0.5 points)" in tables["Learn&Drop"]
    assert "+1.00 at 0.55× ✓" in tables["Learn&Drop"]


def test_story_and_headline_say_who_beats_dense_trained_for_the_same_time(tmp_path) -> None:
    rows = [*_frontier_rows(),
            _paper("ld", "learndrop", 0, 0.86, 5.5), _paper("dcp", "dcp", 0, 0.80, 7.0),
            _paper("fast", "learndrop", 0, 0.70, 2.0)]
    for r in rows:
        r["_file"] = "paper.jsonl"
    summaries = summarize(rows)
    text = "\n".join(story(summaries))
    assert ("Dense trained for the same 0.55× of the time (fewer epochs, or a smaller network) "
            "reaches 85.00%: this run lies 1.00 points above the dense frontier.") in text
    assert "lies 7.00 points below the dense frontier" in text
    assert "so the frontier cannot place it" in text
    [line] = [line for line in headline(summaries) if "resnet32" in line]
    assert ("Against dense trained for the same time (the dense frontier; points of top-1): "
            "above it `ld` +1.00; below it `dcp` -7.00. Faster than every dense run of the "
            "frontier, not placed: `fast`.") in line
    # without frontier rows the headline says the times are not judged against it
    bare = [r for r in rows if r["label"] not in ("dense-b0.3", "dense-b0.45", "dense-b0.6")
            and r["model"] == "resnet32"]
    [line] = headline(summarize(bare))
    assert "No dense frontier was measured here" in line


def test_the_report_writes_the_frontier_table_and_draws_it(tmp_path) -> None:
    rows = [*_frontier_rows(), _paper("ld", "learndrop", 0, 0.86, 5.5)]
    path = _write(tmp_path / "paper-cpu2-torch2.13.0.jsonl", rows)
    result = write_report([path], tmp_path / "out")
    text = result["markdown"]
    assert "Dense frontier of resnet32 on cifar10 (3 epochs)" in text
    # how a frontier is built and read is said before the first one only
    assert text.count("every dense run of this suite on the same data") == 1
    assert ("Dense frontier of resnet20 on cifar10 (3 epochs); how it is built and read: the "
            "first dense frontier above.") in text
    assert "| dense-b0.6 | 2 | cosine | 86.00 (n=1, single seed) | 0.60× | 0.0 | ★◆ |" in text
    assert "| dense-b0.45 | 1 | cosine |" in text and "| 0.45× | 0.0 | – |" in text
    assert "| resnet20/dense | 3 | cosine |" in text
    assert (tmp_path / "out" / "paper-cifar10-resnet32-pareto.png").stat().st_size > 0


def test_the_report_tables_a_stream_chunk_by_chunk(tmp_path) -> None:
    from leantrain.harness.report import stream_table

    def streamed(label, method, seed, accs, times):
        r = _paper(label, method, seed, accs[-1], times[-1])
        r["stream"] = [{"chunk": k + 1, "test_acc": a, "train_s": t}
                       for k, (a, t) in enumerate(zip(accs, times))]
        return r

    rows = [streamed("stream-dense", "none", 0, [0.5, 0.6, 0.7], [10.0, 20.0, 30.0]),
            streamed("stream-dense", "none", 1, [0.5, 0.7, 0.8], [10.0, 20.0, 30.0]),
            streamed("stream-ld", "learndrop", 0, [0.5, 0.6, 0.65], [10.0, 16.0, 21.0])]
    summaries = summarize(load_rows([_write(tmp_path / "r.jsonl", rows)]))
    table = stream_table(summaries)
    assert "| Top-1 % after chunk 1 | Top-1 % after chunk 2 | Top-1 % after chunk 3 |" in table
    assert "| resnet32 | stream-dense | 2 | 50.00 | 65.00 | 75.00 | 10 / 10 / 10 | 1.00× |" in table
    assert "| resnet32 | stream-ld | 1 | 50.00 | 60.00 | 65.00 | 10 / 6 / 5 | 0.70× |" in table
    assert stream_table([s for s in summaries if False]) is None
    assert "Data that arrive in sequence" in write_report(
        [tmp_path / "r.jsonl"], tmp_path / "out")["markdown"]


def test_fine_tuning_from_another_source_is_not_on_the_frontier(tmp_path) -> None:
    """A smaller network shares the frontier only when it starts from the same weights."""
    rows = _frontier_rows()
    for r in rows:
        if r["model"] == "resnet20":
            r["config"].setdefault("model", {})["init"] = "other-source.safetensors"
    summaries = summarize(load_rows([_write(tmp_path / "paper-cpu2.jsonl", rows)]))
    frontier = _resnet32_frontier(summaries)
    assert [p.name("resnet32") for p in frontier.envelope("time")] == [
        "dense-b0.3", "dense-b0.6", "dense"]


def test_a_shorter_run_of_the_model_stands_at_dense_pace_beside_its_measured_time(
        tmp_path) -> None:
    """Every epoch of a budgeted dense run is dense's work, so its pace against dense is measured
    over the whole run: on a machine 20% slower than dense's session its 6 of 10 epochs measure
    0.72× but stand at 0.60×. Another network's pace cannot be measured: it stays as measured."""
    from test_report import _epoch_trace

    rows = [_paper("dense", "none", 0, 0.90, 100.0, epochs=10),
            _paper("dense-b0.6", "none", 0, 0.86, 72.0, budget=0.6, epochs=10),
            _paper("dense", "none", 0, 0.84, 66.0, model="resnet20", epochs=10)]
    rows[0]["trace"] = _epoch_trace([10.0] * 10, [100] * 10)
    rows[1]["trace"] = _epoch_trace([12.0] * 6, [100] * 6)
    rows[2]["trace"] = _epoch_trace([6.6] * 10, [60] * 10)
    summaries = summarize(load_rows([_write(tmp_path / "paper-cpu2.jsonl", rows)]))
    frontier = _resnet32_frontier(summaries)
    by = {p.name("resnet32"): p for p in frontier.points}
    assert by["dense-b0.6"].time_ratio == pytest.approx(0.60)
    assert by["dense-b0.6"].measured == pytest.approx(0.72)
    assert by["resnet20/dense"].time_ratio == pytest.approx(0.66)
    assert by["resnet20/dense"].measured is None
    assert "| dense-b0.6 | 6 | cosine | 86.00 (n=1, single seed) | 0.60× (measured 0.72×) |" in (
        write_report([tmp_path / "paper-cpu2.jsonl"], tmp_path / "out")["markdown"])


def test_a_shorter_run_on_a_machine_dense_never_ran_on_still_joins_the_frontier(
        tmp_path) -> None:
    """Its own time cancels out at dense's pace: it stands at the share of dense's time its
    epochs take (dense's first 3 of 10 epochs took 36 of 100 s: the slow first epochs count),
    with no measured ratio beside it; seeds on both machines still give one point. A run with
    lighter epochs (layers frozen) is not dense's work: it gets no place without a dense
    beside it."""
    from test_report import _epoch_trace

    other = {**ENV, "cpu": "Other CPU"}
    rows = [_paper("dense", "none", 0, 0.90, 100.0, epochs=10),
            _paper("dense-b0.3", "none", 0, 0.80, 50.0, budget=0.3, epochs=10, env=other),
            _paper("dense-b0.3", "none", 1, 0.82, 60.0, budget=0.3, epochs=10, env=other),
            _paper("dense-b0.6", "none", 0, 0.86, 66.0, budget=0.6, epochs=10, env=other)]
    rows[0]["trace"] = _epoch_trace([16.0, 10.0, 10.0, 10.0] + [9.0] * 6, [100] * 10)
    rows[1]["trace"] = _epoch_trace([20.0, 15.0, 15.0], [100] * 3)
    rows[2]["trace"] = _epoch_trace([20.0, 20.0, 20.0], [100] * 3)
    rows[3]["trace"] = _epoch_trace([11.0] * 6, [100, 100, 100, 100, 100, 60])
    summaries = summarize(load_rows([_write(tmp_path / "paper-cpu2.jsonl", rows)]))
    frontier = _resnet32_frontier(summaries)
    by = {p.name("resnet32"): p for p in frontier.points}
    assert by["dense-b0.3"].time_ratio == pytest.approx(0.36)
    assert by["dense-b0.3"].measured is None and by["dense-b0.3"].acc == pytest.approx(81.0)
    assert by["dense-b0.6"].time_ratio is None
    assert frontier.accuracy_at("time", 0.5) == pytest.approx(81.0 + 9.0 * 0.14 / 0.64)
    assert ("| dense-b0.3 | 3 | cosine | 81.00 ± 1.41 (n=2) | 0.36× (no dense timed on its "
            "machine) |") in write_report([tmp_path / "paper-cpu2.jsonl"],
                                          tmp_path / "out")["markdown"]


def test_a_method_on_a_machine_dense_never_ran_on_is_timed_against_dense_inferred_there(
        tmp_path) -> None:
    """Dense's time on a machine it never ran on is each budgeted dense run's time there ÷ the
    share of dense's time its epochs take: 50 s / 0.36 and 60 s / 0.36, 152.8 s on average. A
    method's run there is divided by it; the budgeted runs themselves keep no measured ratio
    (it would be their own time over itself), and a run with lighter epochs (layers frozen)
    gives no estimate. The report says what was inferred, from how many runs, how well they
    agree; the method's pace check times dense by the run's own epochs of dense's work."""
    from leantrain.harness.pace import infer_dense_times, pace_checks
    from test_report import _epoch_trace

    other = {**ENV, "cpu": "Other CPU"}
    rows = [_paper("dense", "none", 0, 0.90, 100.0, epochs=10),
            _paper("dense-b0.3", "none", 0, 0.80, 50.0, budget=0.3, epochs=10, env=other),
            _paper("dense-b0.3", "none", 1, 0.82, 60.0, budget=0.3, epochs=10, env=other),
            _paper("dense-b0.6", "none", 0, 0.86, 66.0, budget=0.6, epochs=10, env=other),
            _paper("ld", "learndrop", 0, 0.85, 76.0, epochs=10, env=other)]
    rows[0]["trace"] = _epoch_trace([16.0, 10.0, 10.0, 10.0] + [9.0] * 6, [100] * 10)
    rows[1]["trace"] = _epoch_trace([20.0, 15.0, 15.0], [100] * 3)
    rows[2]["trace"] = _epoch_trace([20.0, 20.0, 20.0], [100] * 3)
    rows[3]["trace"] = _epoch_trace([11.0] * 6, [100, 100, 100, 100, 100, 60])
    # 3 epochs of dense's work in 54 s (0.36 of dense's time: dense at 150 s that day), then drops
    rows[4]["trace"] = _epoch_trace([24.0, 15.0, 15.0, 4.0] + [3.0] * 6, [100] * 3 + [60] * 7)
    path = _write(tmp_path / "paper-cpu2.jsonl", rows)
    summaries = summarize(load_rows([path]))
    by = {s.label: s for s in summaries}
    assert by["ld"].time_ratio is None  # nothing inferred yet: no dense on its machine
    infer_dense_times(summaries)
    [(machine, times)] = by["dense"].inferred_times.items()
    assert times == pytest.approx([50.0 / 0.36, 60.0 / 0.36])
    assert by["ld"].time_ratio == pytest.approx(76.0 / (110.0 / 0.36 / 2))
    assert by["dense-b0.3"].time_ratio is None and by["dense-b0.6"].time_ratio is None
    frontier = _resnet32_frontier(summaries)
    point = {p.name("resnet32"): p for p in frontier.points}["dense-b0.3"]
    assert point.time_ratio == pytest.approx(0.36) and point.measured is None
    # The pace check reads dense's epochs there as the inferred time × their share of it: the
    # run's own epochs of dense's work time dense at 150 s, 0.98× the inferred 152.8 s.
    [pace] = pace_checks(by["ld"])
    assert pace.epochs == (1, 2, 3) and pace.ratio == pytest.approx(54.0 / (0.36 * 152.777), 1e-4)
    assert pace.time_ratio / pace.ratio == pytest.approx(76.0 / 150.0)
    markdown = write_report([path], tmp_path / "out")["markdown"]
    assert ("Dense `resnet32` (dense) never trained its full length on Other CPU: its time "
            "there, 153 s, is inferred from its runs trained for fewer epochs on that machine, "
            "each run's time ÷ the share of dense's time its epochs take (2 estimates, "
            "139–167 s, within ±9.1% of their mean;") in markdown
    # 153 s / 76 s: 2.01× faster than dense, 0.50× its time, in the table and the targets
    assert "| cifar10 | resnet32 | ld | 85.00 (n=1, single seed) | 76.0 (B) | 2.01× |" in markdown
    assert "| paper: cifar10 / resnet32 / ld | 1 (single seed) | 0.50× ✓ |" in markdown
    assert "| ld | 0 | Other CPU | 1–3 | 0.982× | 0.50× | 0.51× |" in markdown


def test_a_learndrop_run_meets_the_network_it_ended_with_trained_from_scratch(tmp_path) -> None:
    """Liu et al.'s control for layer dropping: the suite's dense run of the network a run ended
    with (equal final parameters and MACs), and not a network that only ties on MACs."""
    def ended(row, params, macs):
        row["final_params"], row["final_macs"] = params, macs
        return row
    rows = [*_frontier_rows(),
            ended(_paper("dense", "none", 0, 0.83, 4.0, model="resnet14", train=120.0), 300, 20),
            ended(_paper("dense", "none", 0, 0.88, 6.5, model="tied", train=200.0), 400, 20),
            ended(_paper("ld", "learndrop", 0, 0.85, 5.5), 300, 20),
            ended(_paper("ld", "learndrop", 1, 0.86, 5.5), 300, 20),
            ended(_paper("ld-other", "learndrop", 0, 0.85, 5.5), 250, 20)]
    for r in rows:
        r["_file"] = "paper.jsonl"
    summaries = summarize(rows)
    by = {(s.model, s.label): s for s in summaries}
    frontier = _resnet32_frontier(summaries)
    scratch = frontier.scratch_of(by["resnet32", "ld"])
    assert scratch is not None and scratch.summary.model == "resnet14"
    assert frontier.scratch_of(by["resnet32", "ld-other"]) is None
    [check] = [c for c in check_targets(summaries)
               if c.column.startswith("Control: its final network") and c.where.endswith("/ ld")]
    assert check.measured == "+7.00 at 0.40× (resnet14, n=1)" and check.met is None
    assert check.seeds == 2  # the run's own seeds: the table's Seeds column is the run's
    text = "\n".join(story(summaries))
    assert ("The network it ended with is `resnet14` (equal parameters and FLOPs); trained "
            "densely from scratch for the whole recipe (Liu et al., arXiv 1810.05270), that "
            "network reached 83.00% (-2.50 points vs this run) at 0.40× dense time.") in text
