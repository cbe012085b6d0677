"""The bench's summary pieces render what they are given (perf/summary.py and the sections of
perf/accept.py, e2e.py and backlog.py), without a bench run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))
# perf/ is not a package; its extras (psutil) are installed by make.
from accept import SEND
from backlog import busy_cpu
from e2e import EndToEnd, e2e_shapes, end_to_end_section
from runs import Run, Stat, read_failures
from summary import Findings, render, run_notes


def end_to_end(shape: str, finished_per_s: float, cpu_cores: float = 1.5, gateways: int = 1) -> EndToEnd:
    return EndToEnd(
        offered_per_s=1000,
        accepted=6000,
        accepted_per_s=200,
        finished=5800,
        finished_per_s=finished_per_s,
        finished_overall_per_s=150,
        lag_p50=0.2,
        lag_p95=0.4,
        final_p50=2.9,
        final_p95=30.0,
        states={"delivered": 5700, "in_progress": 200},
        workers=2,
        batch=200,
        pool=40,
        drain_s=60,
        pending_after_drain=200,
        shape=shape,
        gateways=gateways,
        cpu_cores=cpu_cores,
        accept_p50_ms=290,
        accept_p99_ms=490,
    )


def test_end_to_end_section_has_a_column_per_shape() -> None:
    shapes = [end_to_end("one", 164), end_to_end("split", 211), end_to_end("scaled", 250, gateways=3)]
    lines = end_to_end_section(shapes)
    text = "\n".join(lines)

    assert "| | one gateway | front + worker gateway | 3 gateways, each both | target |" in text
    [finished] = [line for line in lines if "finished cascades/s** (accepted" in line]
    assert "**164**" in finished and "**211**" in finished and "**250**" in finished and "not met" in finished
    [latency] = [line for line in lines if line.startswith("| SendNotification p50")]
    assert latency.count("290 / 490 ms") == 3


def test_cpu_per_cascade_and_the_cores_the_target_would_take() -> None:
    # 1.5 busy cores finishing 150 cascades/s: 10 ms each; 1.8 cores at 300/s: 6 ms each.
    lines = end_to_end_section([end_to_end("one", 150, 1.5), end_to_end("scaled", 300, 1.8, 2)])

    [cost] = [line for line in lines if line.startswith("| **CPU per finished cascade**")]
    assert "**10.0 ms**" in cost and "**6.0 ms**" in cost
    [capacity] = [line for line in lines if line.startswith("Everything on this machine")]
    assert "**6.0 ms of CPU per finished cascade** at best (2 gateways, each both:" in capacity
    assert "take about **6.0 cores**" in capacity


def test_cpu_per_cascade_is_broken_down_by_part_and_the_rest_adds_up() -> None:
    e2e = end_to_end("one", 200, 1.5)
    e2e.cpu_parts = {"gateway": 0.8, "postgres": 0.4, "simulator": 0.2, "locust": 0.06, "redis": 0.04}
    lines = end_to_end_section([e2e])

    [parts] = [line for line in lines if line.startswith("| of which gateways / PostgreSQL")]
    assert "| 4.0 / 2.0 / 1.0 / 0.3 / 0.2 ms |" in parts  # 7.5 ms in all


def test_end_to_end_shapes_default_to_all_and_refuse_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BENCH_E2E_SHAPES", raising=False)
    assert e2e_shapes(2) == ["one", "split", "scaled"]
    assert e2e_shapes(1) == ["one", "split"]  # scale-out needs more than one gateway
    monkeypatch.setenv("BENCH_E2E_SHAPES", "scaled, one")
    assert e2e_shapes(2) == ["scaled", "one"]
    monkeypatch.setenv("BENCH_E2E_SHAPES", "one,two")
    with pytest.raises(SystemExit, match="unknown shape"):
        e2e_shapes(2)


def test_busy_cpu_covers_the_samples_until_the_given_second() -> None:
    # (monotonic seconds, cumulative CPU seconds of gateway, postgres, simulator)
    samples = [(0.0, 0.0, 0.0, 0.0), (5.0, 4.0, 2.0, 1.0), (10.0, 9.0, 4.0, 2.0), (20.0, 9.5, 4.2, 2.1)]

    assert busy_cpu(samples, 10.0) == pytest.approx((0.9, 0.4, 0.2))
    assert busy_cpu(samples, 7.0) == pytest.approx((0.9, 0.4, 0.2))  # the first sample past it
    assert busy_cpu(samples, 99.0) == pytest.approx((0.475, 0.21, 0.105))  # all of them


def send_run(name: str, requests: int, failures: int, rps: float) -> Run:
    stat = Stat(SEND, requests, failures, rps, p50=10, p95=20, p99=30)
    return Run(name, "send", 1, 64, 30, 1, [stat], {}, wall=30.0)


def first_pair() -> list[Run]:
    return [send_run("bare-send", 120_000, 0, 4000), send_run("kaskad-send", 60_000, 0, 2000)]


def summary(runs: list[Run]) -> str:
    return render(Findings(runs), "b", "s")


def summary_line(runs: list[Run], prefix: str) -> str:
    [line] = [line for line in summary(runs).splitlines() if line.startswith(prefix)]
    return line


def test_refused_calls_do_not_count_towards_the_accept_rate() -> None:
    # Two processes answering fast refusals (RESOURCE_EXHAUSTED) must not look like accepting.
    runs = [*first_pair(), send_run("kaskad-send-2gw", 90_000, 60_000, 3000)]

    rate = summary_line(runs, "| calls/s that succeeded")
    assert "| 4000 | 2000 | **0.50** | 1000 | **0.25** |" in rate
    assert "1 process met, 2: not met" in rate


def test_the_table_shows_the_pair_of_median_ratio_and_every_pair_is_listed() -> None:
    runs = [
        *first_pair(),  # 0.50
        send_run("bare-send-repeat", 150_000, 0, 5000),
        send_run("kaskad-send-repeat", 66_000, 0, 2200),  # 0.44
        send_run("kaskad-send-repeat2", 70_000, 0, 2300),
        send_run("bare-send-repeat2", 140_000, 0, 4800),  # 0.48
    ]

    assert "| 4800 | 2300 | **0.48** |" in summary_line(runs, "| calls/s that succeeded")
    pairs = summary_line(runs, "The pair was run 3 times")
    assert "first: bare 4000 calls/s, Kaskad 2000, **0.50**" in pairs
    assert "repeat: bare 5000 calls/s, Kaskad 2200, **0.44**" in pairs
    assert "repeat2 (in the table): bare 4800 calls/s, Kaskad 2300, **0.48**" in pairs


def test_of_two_pairs_the_table_shows_the_lower_ratio() -> None:
    runs = [
        *first_pair(),
        send_run("bare-send-repeat", 150_000, 0, 5000),
        send_run("kaskad-send-repeat", 66_000, 0, 2200),
    ]

    assert "| 5000 | 2200 | **0.44** |" in summary_line(runs, "| calls/s that succeeded")
    assert "repeat (in the table)" in summary_line(runs, "The pair was run 2 times")


def test_a_single_pair_heads_the_table_without_a_list_of_pairs() -> None:
    text = summary(first_pair())

    assert "| calls/s that succeeded | 4000 | 2000 | **0.50** |" in text
    assert "The pair was run" not in text


def test_warm_up_runs_are_reported_but_not_the_figure() -> None:
    warmups = [send_run("bare-send-warmup", 60_000, 0, 4000), send_run("kaskad-send-warmup", 24_000, 0, 1600)]
    text = summary([*warmups, *first_pair()])

    assert "| calls/s that succeeded | 4000 | 2000 | **0.50** |" in text  # the counted pair
    assert "Cold, from its first call, Kaskad did 1600 calls/s against the bare server's 4000: 0.40." in text


def test_failed_calls_are_quoted_in_the_notes_not_left_in_a_csv(tmp_path: Path) -> None:
    # The raw CSVs are not kept in git: the summary must say what failed by itself.
    (tmp_path / "kaskad-send_failures.csv").write_text(
        "Method,Name,Error,Occurrences,First Seen,Last Seen\n"
        "grpc,SendNotification,RESOURCE_EXHAUSTED: backlog full,40,1,2\n"
        "grpc,SendNotification,UNAVAILABLE: connection reset,2,1,2\n"
    )
    run = send_run("kaskad-send", 1000, 42, 30)
    run.errors = read_failures(tmp_path / "kaskad-send_failures.csv")

    [note] = [n for n in run_notes([run]) if n.startswith("**kaskad-send")]
    assert note.startswith("**kaskad-send: 42 failed calls**; the most frequent: 40× `SendNotification`:")
    assert "RESOURCE_EXHAUSTED: backlog full" in note and "UNAVAILABLE: connection reset" in note
    assert ".csv" not in note
