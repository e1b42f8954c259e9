"""`run.py report`: evaluation matrix, continual-learning metrics, plots and HTML from a run's logs."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

import run
from envs.scores import capped_sum
from reporting.metrics import LATEST_ROUND, EvalRound, build_matrix, continual_metrics
from reporting.runs import load_run
from reporting.seeds import seed_groups, seed_groups_text
from training.evaluation import eval_round

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOG_FILES = ("config.yaml", "eval.jsonl", "metrics.jsonl")  # what a report reads (checkpoints are not needed)


def copy_run(source: Path, target: Path, run_name: str | None = None, **changes) -> Path:
    """A copy of a run's logs, optionally renamed or with other config entries changed (a second run for
    comparisons, without training one); changes to a section go as section={key: value}."""
    target.mkdir(parents=True)
    for name in LOG_FILES:
        shutil.copy(source / name, target / name)
    if run_name is not None or changes:
        config = yaml.safe_load((target / "config.yaml").read_text())
        if run_name is not None:
            config["run_name"] = run_name
        for key, value in changes.items():
            if isinstance(value, dict):
                config[key].update(value)
            else:
                config[key] = value
        (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def shift_scores(run_dir: Path, score: float, normalized: float) -> None:
    """Add to every evaluation score of a run (a run that played differently, without training one);
    each round's capped sum follows its normalised scores."""
    records = read_jsonl(run_dir / "eval.jsonl")
    for record in records:
        for entry in record["games"].values():
            entry["score"] += score
            entry["normalized"] = None if entry["normalized"] is None else entry["normalized"] + normalized
        record["capped_sum"] = capped_sum({game: entry["normalized"] for game, entry in record["games"].items()})
    (run_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def approx(value):
    return None if value is None else pytest.approx(value, abs=1e-12)


# ----------------------------------------------------------------------------- metrics on a known matrix


def make_round(kind: str, visit: int, frames: int, scores: dict[str, float], normalized: dict) -> EvalRound:
    return EvalRound(kind, frames, visit, scores, normalized, sum(min(v, 1) for v in normalized.values() if v is not None))


# Schedule A, B, A, C; "Zed" stands for a game without human reference scores (raw scale).
TRAINED = ["A", "B", "A", "Zed"]
GAMES = ["A", "B", "Zed"]
INITIAL = make_round("initial", 0, 0, {"A": 0, "B": 0, "Zed": 5}, {"A": 0.0, "B": 0.1, "Zed": None})
# normalised values of A and B, raw values of Zed, after each visit:
ROWS = [
    {"A": 0.8, "B": 0.2, "Zed": 7},   # after visit 0 (A)
    {"A": 0.3, "B": 0.9, "Zed": 4},   # after visit 1 (B)
    {"A": 0.7, "B": 0.5, "Zed": 6},   # after visit 2 (A)
    {"A": 0.6, "B": 0.95, "Zed": 10},  # after visit 3 (Zed): B ends above its best
]


def synthetic_rounds() -> list[EvalRound]:
    rounds = [INITIAL]
    for i, row in enumerate(ROWS):
        raw = {g: 100 * v if g != "Zed" else v for g, v in row.items()}  # raw scores differ from the normalised ones
        norm = {g: (v if g != "Zed" else None) for g, v in row.items()}
        rounds.append(make_round("periodic", i, 1000 * i + 500, {g: -1.0 for g in row}, {g: None for g in row}))
        rounds.append(make_round("visit_end", i, 1000 * (i + 1), raw, norm))
    return rounds


def test_metrics_of_a_known_matrix():
    matrix = build_matrix(synthetic_rounds(), TRAINED, GAMES)
    assert matrix.source == "visit_end"
    assert matrix.scales() == {"A": "normalized", "B": "normalized", "Zed": "raw"}
    assert matrix.values() == [[0.8, 0.2, 7], [0.3, 0.9, 4], [0.7, 0.5, 6], [0.6, 0.95, 10]]
    m = continual_metrics(matrix)
    assert m["average_final"] == pytest.approx((0.6 + 0.95 + 10) / 3)
    # forgetting: best score from the first visit to the one before last, minus the final score
    assert m["forgetting"]["A"] == pytest.approx(0.8 - 0.6)
    assert m["forgetting"]["B"] == pytest.approx(0.9 - 0.95)  # negative: B improved
    assert m["forgetting"]["Zed"] is None  # first trained in the last visit
    assert m["average_forgetting"] == pytest.approx((0.2 - 0.05) / 2)
    # backward transfer: final minus the score right after the game's last visit
    assert m["backward_transfer_per_game"] == {"A": pytest.approx(0.6 - 0.7), "B": pytest.approx(0.95 - 0.9), "Zed": None}
    assert m["backward_transfer"] == pytest.approx((-0.1 + 0.05) / 2)
    # forward transfer: the score just before the first visit minus the untrained network's
    assert m["forward_transfer_per_game"] == {"A": None, "B": pytest.approx(0.2 - 0.1), "Zed": pytest.approx(6 - 5)}
    assert m["forward_transfer"] == pytest.approx((0.1 + 1) / 2)
    assert m["final_capped_sum"] == pytest.approx(0.6 + 0.95)


def test_matrix_takes_the_last_round_of_a_visit_and_leaves_gaps_empty():
    rounds = synthetic_rounds()
    relogged = make_round("visit_end", 1, 2000, {"A": 11, "B": 12, "Zed": 13}, {"A": 0.11, "B": 0.12, "Zed": None})
    without_visit_2 = [r for r in rounds if not (r.kind == "visit_end" and r.visit_index == 2)] + [relogged]
    matrix = build_matrix(without_visit_2, TRAINED, GAMES)
    assert matrix.values()[1] == [0.11, 0.12, 13]  # a resumed run's second record of visit 1 wins
    assert matrix.values()[2] == [None, None, None]
    m = continual_metrics(matrix)
    assert m["backward_transfer_per_game"]["A"] is None  # the row of A's last visit is missing: undefined
    assert m["backward_transfer_per_game"]["B"] == pytest.approx(0.95 - 0.12)
    assert m["forgetting"]["A"] == pytest.approx(0.8 - 0.6)


def test_matrix_of_a_run_without_visit_end_rounds_uses_each_visits_latest_round():
    rounds = [r for r in synthetic_rounds() if r.kind != "visit_end"]
    matrix = build_matrix(rounds, TRAINED, GAMES)
    assert matrix.source == LATEST_ROUND
    assert matrix.raw[0] == (-1.0, -1.0, -1.0) and matrix.scales()["A"] == "raw"
    assert build_matrix([INITIAL], TRAINED, GAMES) is None


def test_an_interrupted_run_has_metrics_up_to_its_last_visit():
    rounds = [r for r in synthetic_rounds() if r.visit_index < 2]
    m = continual_metrics(build_matrix(rounds, TRAINED, GAMES))
    assert m["final_visit"] == 1
    assert m["forgetting"] == {"A": pytest.approx(0.8 - 0.3), "B": None, "Zed": None}
    assert m["forward_transfer_per_game"] == {"A": None, "B": pytest.approx(0.2 - 0.1), "Zed": None}


# ----------------------------------------------------------------------------- the command on the real tiny run


def hand_metrics(eval_path: Path, trained: list[str]) -> dict:
    """The metrics recomputed straight from eval.jsonl, written out loop by loop."""
    records = read_jsonl(eval_path)
    initial = next(r for r in records if r["kind"] == "initial")
    rows = {r["visit_index"]: r for r in records if r["kind"] == "visit_end"}
    assert sorted(rows) == list(range(len(trained))), "the tiny run scores every game at every visit's end"
    games = list(initial["games"])

    def value(record: dict, game: str) -> float:
        entry = record["games"][game]
        return entry["normalized"] if entry["normalized"] is not None else entry["score"]

    last = len(trained) - 1
    final = {g: value(rows[last], g) for g in games}
    forgetting, backward, forward = {}, {}, {}
    for g in games:
        visits = [i for i, t in enumerate(trained) if t == g]
        if visits[0] < last:
            forgetting[g] = max(value(rows[i], g) for i in range(visits[0], last)) - final[g]
        if visits[-1] < last:
            backward[g] = final[g] - value(rows[visits[-1]], g)
        if visits[0] > 0:
            forward[g] = value(rows[visits[0] - 1], g) - value(initial, g)
    mean = lambda d: sum(d.values()) / len(d) if d else None  # noqa: E731
    return {
        "average_final": sum(final.values()) / len(final),
        "final_capped_sum": sum(min(rows[last]["games"][g]["normalized"], 1) for g in games),
        "forgetting": forgetting, "average_forgetting": mean(forgetting),
        "backward_transfer": mean(backward), "forward_transfer": mean(forward),
        "forward_transfer_per_game": forward, "backward_transfer_per_game": backward,
    }


def test_report_on_the_tiny_run(tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert run.main(["report", str(tiny_run), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "", "--quiet must silence progress"
    assert "average_final" in captured.out and "tiny" in captured.out  # the metrics table on stdout

    pngs = ["scores.png", "capped_sum.png", "matrix_tiny.png", "training_tiny.png"]
    for name in pngs:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name
    page = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(pngs)
    assert all(base64.b64decode(image).startswith(PNG_SIGNATURE) for image in images)
    assert {base64.b64decode(image) for image in images} == {(out / name).read_bytes() for name in pngs}
    assert "<table>" in page and "Evaluation matrix" in page and 'src="http' not in page  # self-contained

    report = json.loads((out / "report.json").read_text())
    assert report["plots"] == {"scores": "scores.png", "capped_sum": "capped_sum.png"}
    (summary,) = report["runs"]
    assert summary["name"] == "tiny" and summary["plots"] == {"matrix": "matrix_tiny.png", "training": "training_tiny.png"}
    trained = [v["game"] for v in summary["visits"]]
    assert trained == ["Pong", "Breakout", "Pong", "Breakout"]

    # The matrix is eval.jsonl's visit_end rounds, row by row.
    records = read_jsonl(tiny_run / "eval.jsonl")
    visit_end = {r["visit_index"]: r for r in records if r["kind"] == "visit_end"}
    matrix = summary["matrix"]
    assert matrix["games"] == ["Pong", "Breakout"] and matrix["source"] == "visit_end"
    # each visit really ended at its visit_end round, and the next began there
    played = [(v["played_start_frame"], v["played_end_frame"]) for v in summary["visits"]]
    ends = [visit_end[i]["frames"] for i in range(4)]
    assert played == list(zip([0, *ends[:-1]], ends))
    assert matrix["score"] == [[visit_end[i]["games"][g]["score"] for g in matrix["games"]] for i in range(4)]
    assert matrix["normalized"] == [[visit_end[i]["games"][g]["normalized"] for g in matrix["games"]]
                                          for i in range(4)]
    initial = next(r for r in records if r["kind"] == "initial")
    assert matrix["initial"]["score"] == [initial["games"][g]["score"] for g in matrix["games"]]

    # The metrics equal those recomputed by hand from the same file.
    expected = hand_metrics(tiny_run / "eval.jsonl", trained)
    metrics = summary["metrics"]
    for key in ("average_final", "final_capped_sum", "average_forgetting", "backward_transfer", "forward_transfer"):
        assert metrics[key] == approx(expected[key]), key
    assert {g: v for g, v in metrics["forgetting"].items() if v is not None} == pytest.approx(expected["forgetting"])
    assert {g: v for g, v in metrics["forward_transfer_per_game"].items() if v is not None} == pytest.approx(
        expected["forward_transfer_per_game"])
    assert {g: v for g, v in metrics["backward_transfer_per_game"].items() if v is not None} == pytest.approx(
        expected["backward_transfer_per_game"])
    assert metrics["forgetting"]["Pong"] is not None and metrics["forward_transfer_per_game"]["Breakout"] is not None
    assert len(summary["rounds"]) == len(records)


def test_a_forget_me_not_run_reports_its_confusion_matrix_and_agreement(tiny_run, tmp_path, capsys):
    run_dir = copy_run(tiny_run, tmp_path / "fmn_run", run_name="fmn_run", task_inference="fmn")
    confusion = {"tasks": [0, 1, 2], "frames": {"Pong": {"0": 7900, "2": 100}, "Breakout": {"1": 8000}},
                 "adjusted_rand_index": 0.97}
    (run_dir / "fmn_confusion.json").write_text(json.dumps(confusion))
    out = tmp_path / "report"
    assert run.main(["report", str(run_dir), "--out", str(out), "--quiet"]) == 0
    assert "fmn_run: forget-me-not's inferred ids against the games played: adjusted Rand index 0.970" in (
        capsys.readouterr().out)
    (summary,) = json.loads((out / "report.json").read_text())["runs"]
    assert summary["fmn_confusion"] == confusion and summary["task_inference"] == "fmn"
    page = (out / "report.html").read_text()
    assert "Task inference (forget-me-not)" in page and "<td>7,900</td><td>0</td><td>100</td>" in page
    assert "Adjusted Rand index of the inferred ids against the games played: 0.970" in page
    (tiny_out := tmp_path / "tiny_report").mkdir()
    assert run.main(["report", str(tiny_run), "--out", str(tiny_out), "--quiet"]) == 0
    assert "Task inference" not in (tiny_out / "report.html").read_text()  # labelled runs have no such table


def test_report_compares_runs_and_defaults_to_the_first_runs_folder(tiny_run, tmp_path, capsys):
    first = copy_run(tiny_run, tmp_path / "a" / "tiny")
    second = copy_run(tiny_run, tmp_path / "b" / "no_ewc", run_name="no_ewc")
    # Give the second run different scores, so its curve and metrics must come from its own file.
    shift_scores(second, 1.0, 0.5)
    with open(second / "eval.jsonl", "a") as handle:
        handle.write('{"kind": "fin')  # a cut line
    third = copy_run(tiny_run, tmp_path / "c" / "tiny")  # the same run name as the first

    assert run.main(["report", str(first), str(second), str(third)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 malformed line(s) of eval.jsonl" in err
    out = first / "report"
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["tiny", "no_ewc", "tiny"]
    assert [r["plots"]["matrix"] for r in report["runs"]] == ["matrix_tiny.png", "matrix_no_ewc.png", "matrix_tiny_2.png"]
    for name in ("scores.png", "capped_sum.png", "matrix_no_ewc.png", "matrix_tiny_2.png", "report.html"):
        assert (out / name).is_file(), name
    a, b = report["runs"][0]["metrics"], report["runs"][1]["metrics"]
    assert b["average_final"] == pytest.approx(a["average_final"] + 0.5)  # both games have human reference scores
    assert b["forgetting"] == pytest.approx(a["forgetting"])  # a constant shift forgets nothing more
    page = (out / "report.html").read_text()
    assert "no_ewc" in page and page.count("data:image/png;base64,") == 2 + 3 * 2


def test_runs_that_differ_only_in_seed_are_summarised_together(tiny_run, tmp_path, capsys):
    seeds = [copy_run(tiny_run, tmp_path / f"tiny_s{seed}", run_name=f"tiny_s{seed}", seed=seed) for seed in (0, 1, 2)]
    shift_scores(seeds[1], 2.0, 0.3)
    shift_scores(seeds[2], 4.0, 0.9)
    other = copy_run(tiny_run, tmp_path / "strong", run_name="strong", agent={"ewc_lambda": 1000.0})  # another experiment
    out = tmp_path / "report"
    assert run.main(["report", *map(str, seeds), str(other), "--out", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out

    report = json.loads((out / "report.json").read_text())
    (group,) = report["seed_groups"]  # the run with another lambda is not one of the seeds
    assert group["name"] == "tiny" and group["runs"] == ["tiny_s0", "tiny_s1", "tiny_s2"] and group["seeds"] == [0, 1, 2]
    finals = [r["metrics"]["average_final"] for r in report["runs"][:3]]
    assert finals[1] == pytest.approx(finals[0] + 0.3) and finals[2] == pytest.approx(finals[0] + 0.9)
    stat = group["metrics"]["average_final"]
    assert stat["n"] == 3 and stat["mean"] == pytest.approx(finals[0] + 0.4)
    # sample standard deviation of (0, 0.3, 0.9) over sqrt(3)
    assert stat["stderr"] == pytest.approx((((0.4 ** 2 + 0.1 ** 2 + 0.5 ** 2) / 2) ** 0.5) / 3 ** 0.5)
    assert stat["min"] == pytest.approx(finals[0]) and stat["max"] == pytest.approx(finals[2])
    assert "tiny: 3 runs (seed 0, 1, 2), mean ± standard error" in stdout
    assert "Across seeds" in (out / "report.html").read_text()


def test_first_visits_across_seeds_give_the_mean_and_the_weakest_run(tiny_run, tmp_path):
    runs = [load_run(copy_run(tiny_run, tmp_path / f"s{seed}", run_name=f"game_s{seed}", seed=seed)) for seed in (0, 1)]
    summaries = [{"name": run.name, "metrics": None, "learning": {"MinAtar/Freeway": {
        "score": score, "of_published": score / 4.0, "of_random": score / 0.1}}} for run, score in zip(runs, (0.0, 30.0))]
    (group,) = seed_groups(runs, summaries, ["average_final"])
    freeway = group["learning"]["MinAtar/Freeway"]
    assert freeway["score"]["mean"] == 15.0 and freeway["score"]["min"] == 0.0 and freeway["score"]["stderr"] == 15.0
    assert freeway["of_published"]["min"] == 0.0 and freeway["of_published"]["max"] == 7.5
    assert group["metrics"]["average_final"] == {"n": 0, "mean": None, "stderr": None, "min": None, "max": None}
    assert "first visit MinAtar/Freeway: score 15 ± 15 (weakest 0)" in seed_groups_text([group], ["average_final"])


def test_help_describes_the_command(capsys):
    with pytest.raises(SystemExit):
        run.main(["report", "--help"])
    text = capsys.readouterr().out
    assert "Fig. 3A" in text and "forgetting" in text and "--out" in text


def test_missing_run_dir_exits_2_with_one_line(tmp_path, cli):
    done = cli("report", str(tmp_path / "nope"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"run.py report: error: run directory {str(tmp_path / 'nope')!r} does not exist"]


@pytest.mark.parametrize("remove, fragment", [
    ("eval.jsonl", "has no eval.jsonl"),
    ("config.yaml", "has no config.yaml"),
])
def test_run_dir_without_its_logs_returns_2_with_one_line(tiny_run, tmp_path, capsys, remove, fragment):
    copy = copy_run(tiny_run, tmp_path / "run")
    (copy / remove).unlink()
    assert run.main(["report", str(copy)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and lines[0].startswith("run.py report: error:")
    assert not (copy / "report").exists()


def test_empty_eval_log_returns_2(tiny_run, tmp_path, capsys):
    copy = copy_run(tiny_run, tmp_path / "run")
    (copy / "eval.jsonl").write_text("")
    assert run.main(["report", str(copy)]) == 2
    assert "holds no evaluation round" in capsys.readouterr().err


def test_cells_and_metrics_carry_standard_errors_from_the_episodes():
    # Pong normalises as (score + 20.7) / 30 (envs.scores): its errors shrink by that scale; "Zed" stays raw
    rounds = [
        eval_round("visit_end", 100, 0, {"Pong": [-10.0, -12.0, -14.0], "Zed": [4.0, 6.0]}),
        eval_round("visit_end", 200, 1, {"Pong": [-18.0, -20.0, -16.0], "Zed": [9.0, 11.0]}),
    ]
    matrix = build_matrix(rounds, ["Pong", "Zed"], ["Pong", "Zed"])
    pong_raw_error = 2 / 3 ** 0.5  # standard deviation 2 over 3 episodes
    scale = 1 / (9.3 + 20.7)
    assert matrix.scales() == {"Pong": "normalized", "Zed": "raw"}
    assert matrix.stderr[0][0] == pytest.approx(pong_raw_error * scale) and matrix.stderr[0][1] == pytest.approx(1.0)
    metrics = continual_metrics(matrix)
    assert metrics["final_stderr"]["Zed"] == pytest.approx(1.0)
    assert metrics["average_final_stderr"] == pytest.approx((pong_raw_error ** 2 * scale ** 2 + 1.0) ** 0.5 / 2)
    # Pong's round forgetting is the difference of two independent evaluations: their errors add in quadrature
    assert metrics["round_forgetting_stderr"] == pytest.approx(2 ** 0.5 * pong_raw_error * scale)
    assert matrix.to_dict()["stderr"][1][1] == pytest.approx(1.0)
