"""benchmarks/text_distillation.py: the validation choice, the declared recipes and the issue's summary shape."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from benchmarks import text_distillation as td


def _selection(arm: str, recipe: td.Recipe, seed: int, curve: list[float]) -> dict:
    return {
        "data": "trec6",
        "student": "bilstm",
        "arm": arm,
        "seed": seed,
        "selection": True,
        "settings": recipe.settings(),
        "val_acc": curve,
        "command": "select",
        "commit": "abc",
    }


ARMS = ("scratch", "distilled")


def _test(arm: str, seed: int, acc: float, recipe: str = "first") -> dict:
    row = {"data": "trec6", "student": "bilstm", "arm": arm, "seed": seed, "test_acc": acc, "agreement": acc}
    row |= {"params": 779_382, "command": f"run {recipe}", "commit": "abc"}
    return row if recipe == "first" else {**row, "recipe": recipe, "settings": {"lr": 0.003, "epochs": 3}}


def test_choice_is_best_mean_over_seeds_with_ties_to_fewer_epochs() -> None:
    low, high = td.GRIDS["bilstm"]["scratch"][0], td.GRIDS["bilstm"]["scratch"][1]
    rows = [
        _selection("scratch", low, 0, [0.70, 0.80, 0.80]),
        _selection("scratch", low, 1, [0.70, 0.76, 0.78]),
        # Best on seed 0 alone, but never run on seed 1: it does not compete.
        _selection("scratch", td.GRIDS["bilstm"]["scratch"][2], 0, [0.95, 0.95, 0.95]),
        _selection("scratch", high, 0, [0.60, 0.79, 0.78]),
        _selection("scratch", high, 1, [0.60, 0.77, 0.80]),
    ]
    recipe, score = td.choose(rows, "trec6", "bilstm", "scratch")  # type: ignore[misc]
    # low: 0.78 at epoch 2 and 0.79 at 3; high: 0.78 at 2 and 0.79 at 3. A tie at 0.79: the earlier grid entry.
    assert recipe == td.Recipe(lr=low.lr, epochs=3, dropout=low.dropout)
    assert score == pytest.approx(0.79)
    assert td.choose(rows, "trec6", "bilstm", "distilled") is None


def test_selected_recipe_must_match_the_validation_rows(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    runs = tmp_path / "runs.jsonl"
    recipe = td.GRIDS["bilstm"]["distilled"][0]
    runs.write_text(td.json.dumps(_selection("distilled", recipe, 0, [0.5, 0.9, 0.7])) + "\n")
    monkeypatch.setattr(td, "RUNS", runs)
    args = argparse.Namespace(recipe="selected", recipe_from=None, data="trec6", student="bilstm")
    monkeypatch.setattr(td, "SELECTED", {("trec6", "bilstm"): {"distilled": td.replace(recipe, epochs=3)}})
    with pytest.raises(SystemExit, match="not what the validation rows choose"):
        td.recipe_for(args, "distilled")
    monkeypatch.setattr(td, "SELECTED", {("trec6", "bilstm"): {"distilled": td.replace(recipe, epochs=2)}})
    assert td.recipe_for(args, "distilled") == ("selected", td.replace(recipe, epochs=2))
    other = argparse.Namespace(recipe="selected", recipe_from="trec6", data="rotten_tomatoes", student="bilstm")
    assert td.recipe_for(other, "distilled")[0] == "selected_on_trec6"


def test_summary_keeps_the_issue_shape_and_pairs_each_recipe() -> None:
    teacher = {"data": "trec6", "arm": "teacher", "test_acc": 0.93, "params": 22_567_686, "command": "t"}
    teacher |= {"commit": "abc"}
    rows = [teacher, _selection("scratch", td.GRIDS["bilstm"]["scratch"][0], 0, [0.7, 0.8])]
    without_latency = "\n".join(td.markdown(td.summarise([*rows, *(_test(a, 0, 0.8, "selected") for a in ARMS)])))
    assert "No side-by-side latency yet: `python -m benchmarks.text_distillation --data trec6 --latency`" in (
        without_latency
    )
    timed = {"teacher": {"min": 39.0, "median": 40.0, "max": 42.0}, "bilstm": {"min": 0.3, "median": 0.3, "max": 0.4}}
    rows.append({"data": "trec6", "arm": td.LATENCY, "latency_b1_ms": timed, "command": "lat", "commit": "abc"})
    for seed, (s, d) in enumerate([(0.78, 0.79), (0.80, 0.79)]):
        rows += [_test("scratch", seed, s), _test("distilled", seed, d)]
    for seed, (s, d) in enumerate([(0.80, 0.82), (0.81, 0.83)]):
        rows += [_test("scratch", seed, s, "selected"), _test("distilled", seed, d, "selected")]
    entry = td.summarise(rows)["trec6"]
    assert entry["bilstm_paired"]["distilled_minus_scratch"] == [0.01, -0.01]
    assert entry["bilstm_selected_paired"] == {
        "distilled_minus_scratch": [0.02, 0.02],
        "mean": 0.02,
        "wins": 2,
        "seeds": 2,
    }
    # The headline arms are the selected recipe's; selection rows never enter a test-accuracy list.
    assert entry["scratch"]["test_acc"] == [0.80, 0.81] and entry["distilled"]["recipe"] == "selected"
    assert entry["teacher"]["latency_b1_ms"] == 40.0 and entry["scratch"]["latency_b1_ms"] == 0.3
    assert entry["scratch"]["params"] == 779_382 and entry[td.LATENCY]["command"] == "lat"
    assert entry["selection"]["bilstm"]["grid"]["scratch"][0]["val_acc_mean"] == [0.7, 0.8]
    text = "\n".join(td.markdown(td.summarise(rows)))
    assert "distilled ahead of scratch on 2/2 seeds (not met" in text
    assert "29× fewer parameters" in text and "133× lower batch-1 latency (met)" in text


def test_students_take_the_class_order_the_teacher_checkpoint_recorded(tmp_path) -> None:
    checkpoint = tmp_path / "best.ckpt"
    td.torch.save({"state_dict": {"w": td.torch.zeros(1)}, "class_names": ["fresh", "rotten"]}, checkpoint)
    assert td.teacher_labels(checkpoint) == ["fresh", "rotten"]
    td.torch.save({"state_dict": {"w": td.torch.zeros(1)}, "datamodule_hyper_parameters": {"labels": None}}, checkpoint)
    with pytest.raises(SystemExit, match="records no class order: retrain the teacher"):
        td.teacher_labels(checkpoint)


CONFIGS = {
    ("trec6", "bilstm"): ("trec/student_scratch.yaml", "trec/distill.yaml"),
    ("rotten_tomatoes", "bilstm"): ("rotten_tomatoes/student_scratch.yaml", "rotten_tomatoes/distill.yaml"),
    ("trec6", "distilbert"): ("trec/distilbert_scratch.yaml", "trec/distill_distilbert.yaml"),
}


@pytest.mark.parametrize("key", sorted(td.SELECTED), ids="/".join)
def test_the_configs_run_the_recipe_the_validation_chose(key: tuple[str, str]) -> None:
    configs = Path(__file__).resolve().parents[1] / "configs"
    for arm, name in zip(("scratch", "distilled"), CONFIGS[key], strict=True):
        recipe, config = td.SELECTED[key][arm], yaml.safe_load((configs / name).read_text())
        model = config["model"]["init_args"]
        network = model.get("student") or model["network"]
        ran = {
            "epochs": config["trainer"]["max_epochs"],
            "lr": model["optimizer"]["init_args"]["lr"],
            "weight_decay": model["optimizer"]["init_args"].get("weight_decay", 0.0),
            "dropout": network["kwargs"].get("dropout"),
            "temperature": model.get("temperature"),
            "alpha": model.get("alpha"),
        }
        assert {k: v for k, v in ran.items() if v is not None} == recipe.settings(), name
