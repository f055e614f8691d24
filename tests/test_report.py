"""`bench report`: the leaderboard, tables as Markdown, CSV and LaTeX, plots and the BinaryMoS paper comparison, from records alone."""

import csv
import io
import shutil

import pytest

from bench.cli import main
from bench.leaderboard import group_rows, leaderboard_tables, sorted_rows
from bench.report.paper import build_paper_table, check_ppl_protocol, normalize_model_name
from bench.report.plots import pareto_front
from bench.report.table import Cell, Table, latex_escape, to_csv, to_latex, to_markdown
from bench.report.write import write_reports
from bench.results import ResultRecord, ResultStore
from tests.report_records import MODEL, TASKS, ppl_protocol, record, report_records, write_loss_log, zeroshot_protocol

LOSS_LOG = "losses/test.jsonl"


@pytest.fixture
def results(tmp_path):
    directory = tmp_path / "results"
    write_loss_log(directory, LOSS_LOG)
    return directory


def tree_bytes(root) -> dict:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_regeneration_is_byte_identical(tmp_path, results):
    records = report_records(LOSS_LOG)
    write_reports(records, results, tmp_path / "leaderboard.md", tmp_path / "reports")
    first = tree_bytes(tmp_path / "reports")
    leaderboard = (tmp_path / "leaderboard.md").read_bytes()
    shutil.rmtree(tmp_path / "reports")
    (tmp_path / "leaderboard.md").unlink()
    write_reports(records, results, tmp_path / "leaderboard.md", tmp_path / "reports")
    assert tree_bytes(tmp_path / "reports") == first
    assert (tmp_path / "leaderboard.md").read_bytes() == leaderboard
    names = set(first)
    for stem in ("ppl_vs_bits", "zeroshot_accuracy", "memory", "distillation_loss"):
        assert f"smollm2-135m-quick/{stem}.png" in names
        assert f"smollm2-135m-quick/{stem}.svg" in names
    for suffix in ("md", "csv", "tex"):
        assert f"smollm2-135m-quick/table.{suffix}" in names
        assert f"paper/table.{suffix}" in names


def test_plots_carry_no_date(tmp_path, results):
    write_reports(report_records(LOSS_LOG), results, tmp_path / "leaderboard.md", tmp_path / "reports")
    svg = (tmp_path / "reports/smollm2-135m-quick/ppl_vs_bits.svg").read_text()
    png = (tmp_path / "reports/smollm2-135m-quick/ppl_vs_bits.png").read_bytes()
    assert "<dc:date>" not in svg
    assert b"Software" not in png
    assert b"tIME" not in png


def test_stale_report_files_are_removed(tmp_path, results):
    stale = tmp_path / "reports" / "old-model-quick" / "table.md"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    write_reports(report_records(LOSS_LOG), results, tmp_path / "leaderboard.md", tmp_path / "reports")
    assert not stale.exists()


def leaderboard_table():
    ((key, table),) = leaderboard_tables(report_records(LOSS_LOG))
    return key, table


def cell(table: Table, method: str, column: str) -> Cell:
    row = next(row for row in table.rows if row[0].text.split(" ")[0] == method)
    return row[table.columns.index(column)]


def test_table_has_every_metric_column():
    key, table = leaderboard_table()
    assert key == ("smollm2-135m", MODEL["revision"], "quick")
    for column in ("Wiki2 PPL", "C4 PPL", "BoolQ", "ARC-c", "Avg", "Bits/weight (linears)", "Size (MB, artifact)",
                   "Peak eval memory (MB)", "Prefill (ms)", "Decode (ms/token)", "Train tokens", "Train time"):
        assert column in table.columns, column
    assert not any("gold" in column.lower() for column in table.columns)


def test_average_and_stderr_come_from_tasks():
    _key, table = leaderboard_table()
    average = cell(table, "rtn", "Avg")
    tasks = [cell(table, "rtn", label) for label in ("BoolQ", "PIQA", "HellaSwag", "WinoG", "ARC-e", "ARC-c")]
    assert average.value == pytest.approx(sum(task.value for task in tasks) / 6)
    assert average.stderr == pytest.approx((6 * 3.0**2) ** 0.5 / 6)
    assert average.text == "44.5 ± 1.2"
    assert cell(table, "rtn", "BoolQ").text == "32.0 ± 3.0"


def test_measured_columns_only_where_recorded():
    _key, table = leaderboard_table()
    assert cell(table, "binarymos", "Decode (ms/token)").text == "17.50"
    assert cell(table, "binarymos", "Size (MB, artifact)").value == pytest.approx(700e-6)
    assert cell(table, "rtn", "Decode (ms/token)").text == ""
    assert cell(table, "binarymos", "Train time").text == "1m15s"


def test_table_notes_state_protocol_once():
    _key, table = leaderboard_table()
    zero_shot = [note for note in table.notes if note.startswith("Zero-shot:")]
    assert len(zero_shot) == 1
    assert "200 examples" in zero_shot[0]
    assert sum(note.startswith("Perplexity, wikitext2") for note in table.notes) == 1
    assert any(note.startswith("Decode latency (ms per token)") for note in table.notes)
    memory = [note for note in table.notes if note.startswith("Peak eval memory")]
    assert memory == ["Peak eval memory: device cpu, seqlen 512."]


def test_csv_splits_stderr_columns():
    _key, table = leaderboard_table()
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    rtn = next(row for row in rows if row["Method"] == "rtn")
    assert float(rtn["BoolQ"]) == pytest.approx(32.0)
    assert float(rtn["BoolQ stderr"]) == pytest.approx(3.0)
    assert float(rtn["Wiki2 PPL"]) == pytest.approx(3.0e6)
    assert "Wiki2 PPL stderr" not in rtn


def test_markdown_and_latex_escape():
    table = Table("t", ["Method", "Value"])
    table.add_row([Cell("a|b_c & 5%"), Cell("1.0 ± 0.1")])
    assert to_markdown(table)[2] == "| a\\|b_c & 5% | 1.0 ± 0.1 |"
    latex = to_latex(table)
    assert r"a|b\_c \& 5\% & 1.0 $\pm$ 0.1 \\" in latex
    assert latex_escape("x^2") == r"x\textasciicircum{}2"


def test_row_with_wrong_width_is_rejected():
    with pytest.raises(ValueError, match="2 columns"):
        Table("t", ["a", "b"]).add_row([Cell("x")])


def test_pareto_front_keeps_undominated_points():
    points = [(1.0, 100.0), (1.1, 50.0), (1.3, 80.0), (2.0, 10.0), (32.0, 5.0), (3.0, 20.0)]
    assert pareto_front(points) == [(1.0, 100.0), (1.1, 50.0), (2.0, 10.0), (32.0, 5.0)]


# -- the BinaryMoS paper comparison --------------------------------------------------------------

LLAMA2 = {"name": "meta-llama/Llama-2-7b-hf", "revision": "main", "dtype": "float16"}


def paper_rows(table: Table, model: str, method: str) -> dict[str, list[Cell]]:
    rows = [row for row in table.rows if row[0].text == model and row[1].text == method]
    return {row[2].text.split(" ")[0]: row for row in rows}


def column(table: Table, label: str) -> int:
    return table.columns.index(label)


def test_paper_average_mismatch_is_flagged():
    table = build_paper_table([])
    rows = paper_rows(table, "LLaMA-2-13B", "BinaryMoS")
    assert rows["paper"][column(table, "Avg")].text == "57.09 ≠ 56.92"
    assert rows["paper"][column(table, "Avg")].value == 57.09
    assert any("57.09" in note and "56.92" in note for note in table.notes)
    assert paper_rows(table, "LLaMA-1-7B", "FP16")["paper"][column(table, "Avg")].text == "64.06"


def test_unreproduced_cells_are_empty():
    table = build_paper_table([])
    rows = paper_rows(table, "LLaMA-1-7B", "OneBit")
    assert set(rows) == {"paper", "ours"}
    assert all(cell.text == "" for cell in rows["ours"][3:])


def test_matching_protocol_gets_difference():
    wiki = ppl_protocol("wikitext2", seqlen=2048, windows=None)
    records = [
        record("binarymos", "ppl/wikitext2", 8.10, protocol=wiki, model=LLAMA2),
        record("binarymos", "ppl/c4", 10.5, protocol=ppl_protocol("c4", seqlen=2048, windows=None), model=LLAMA2),
        *[record("binarymos", f"zeroshot/{task}/acc", 0.5, protocol=zeroshot_protocol(limit=None), stderr=0.01, model=LLAMA2) for task in TASKS],
    ]
    table = build_paper_table(records)
    rows = paper_rows(table, "LLaMA-2-7B", "BinaryMoS")
    assert rows["ours"][2].text == "ours (quick)"
    assert rows["ours"][column(table, "Wiki2")].text == "8.10"
    assert rows["difference"][column(table, "Wiki2")].text == "+0.22"
    assert rows["difference"][column(table, "C4")].text == "n.c."
    assert rows["difference"][column(table, "BoolQ")].text == "n.c."
    assert rows["ours"][column(table, "BoolQ")].text == "50.00 ± 1.00"
    assert rows["ours"][column(table, "Avg")].text == "50.00"
    assert rows["difference"][column(table, "Avg")].text == "n.c."
    assert any("lm-eval 0.4.13" in note for note in table.notes)
    assert any("GPTQ's 256 c4 windows" in note for note in table.notes)


def test_models_without_paper_rows_get_own_rows():
    table = build_paper_table(report_records())
    rows = paper_rows(table, "smollm2-135m", "BinaryMoS")
    assert set(rows) == {"ours"}
    assert rows["ours"][column(table, "Wiki2")].text == "8126.60"
    assert rows["ours"][column(table, "Avg")].text == "46.50"
    assert paper_rows(table, "smollm2-135m", "fp (float32)")["ours"][column(table, "Wiki2")].text == "30.60"
    assert paper_rows(table, "smollm2-135m", "rtn")


def test_preferred_profile_wins():
    records = [
        record("onebit", "ppl/wikitext2", 9.0, protocol=ppl_protocol("wikitext2"), model=LLAMA2, profile="quick"),
        record("onebit", "ppl/wikitext2", 8.7, protocol=ppl_protocol("wikitext2", 2048, None), model=LLAMA2, profile="full"),
    ]
    rows = paper_rows(build_paper_table(records), "LLaMA-2-7B", "OneBit")
    assert rows["ours"][2].text == "ours (full)"
    assert rows["ours"][3].text == "8.70"


def test_model_names_normalize():
    assert normalize_model_name("LLaMA-1-7B") == normalize_model_name("huggyllama/llama-7b") == "llama-7b"
    assert normalize_model_name("meta-llama/Llama-2-13b-hf") == normalize_model_name("LLaMA-2-13B")


def test_gptq_c4_protocol_is_comparable():
    protocol = {"seqlen": 2048, "variant": "c4 (GPTQ, 256 validation documents)", "windows_used": 256}
    assert check_ppl_protocol("c4", protocol).comparable
    assert not check_ppl_protocol("c4", {**protocol, "seqlen": 512}).comparable


# -- the command line ----------------------------------------------------------------------------

def test_cli_report_prints_paper_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    store = ResultStore(tmp_path / "results")
    for item in report_records():
        fields = {key: item[key] for key in ("key", "model", "method", "metric", "value", "stage", "stderr", "n_samples",
                                              "profile", "training", "calibration", "storage", "timestamp")}
        store.append(ResultRecord(**fields))
    assert main(["report", "--paper"]) == 0
    output = capsys.readouterr().out
    assert "57.09 ≠ 56.92" in output
    assert "smollm2-135m" in output
    assert (tmp_path / "leaderboard.md").exists()
    assert (tmp_path / "reports" / "paper" / "table.tex").exists()
    before = tree_bytes(tmp_path / "reports")
    assert main(["report"]) == 0
    assert tree_bytes(tmp_path / "reports") == before
    assert sorted_rows(group_rows(store.records())[("smollm2-135m", MODEL["revision"], "quick")])[0].method == "fp"
