"""The report extractor measured on hand-labelled sentences, and its sentence splitting, spans and rules."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from node.events import ReportLabelValue
from node.labels.extract import FINDING_TYPES, HYPERDENSE_LESION, LUNG_NODULE, extract, split_sentences, study_labels

SENTENCES = Path(__file__).with_name("report_sentences.tsv")
MIN_ACCURACY = 0.9


def _labelled() -> list[tuple[str, str, str]]:
    with SENTENCES.open(newline="") as f:
        return [(row["sentence"], row["finding_type"], row["expected"]) for row in csv.DictReader(f, delimiter="\t")]


def test_the_labelled_set_is_large_and_covers_every_value() -> None:
    rows = _labelled()
    assert len({sentence for sentence, _, _ in rows}) >= 120
    assert {ft for _, ft, _ in rows} == set(FINDING_TYPES)
    assert {expected for _, _, expected in rows} == {*(v.value for v in ReportLabelValue), "none"}


def test_accuracy_per_finding_type_is_at_least_0_9() -> None:
    right: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    wrong: list[str] = []
    for sentence, finding_type, expected in _labelled():
        label = study_labels(sentence).get(finding_type)
        got = label.value.value if label is not None else "none"
        total[finding_type] += 1
        if got == expected:
            right[finding_type] += 1
        else:
            rule = f" ({label.evidence.rule})" if label is not None else ""
            wrong.append(f"{finding_type}: expected {expected}, got {got}{rule}: {sentence}")
    accuracy = {ft: right[ft] / total[ft] for ft in FINDING_TYPES}
    overall = sum(right.values()) / sum(total.values())
    print(f"extractor accuracy: {', '.join(f'{ft}={a:.3f} ({right[ft]}/{total[ft]})' for ft, a in accuracy.items())}"
          f", overall={overall:.3f}")
    print("\n".join(wrong))
    assert all(a >= MIN_ACCURACY for a in accuracy.values()), f"accuracy {accuracy}; wrong:\n" + "\n".join(wrong)


def test_mentions_carry_sentence_and_target_spans_the_trigger_and_the_rule() -> None:
    text = "FINDINGS: No evidence of intracranial haemorrhage. There is a 6 mm nodule in the RUL."
    first, second = extract(text)
    assert (first.finding_type, first.value, first.trigger, first.rule) == (
        HYPERDENSE_LESION, ReportLabelValue.NEGATIVE, "No evidence of", "negation.pre:no evidence of")
    assert text[first.sentence.start:first.sentence.end] == first.sentence.text
    assert first.sentence.text == "FINDINGS: No evidence of intracranial haemorrhage."
    assert text[first.target_start:first.target_end] == "haemorrhage"
    assert (second.finding_type, second.value, second.rule, second.trigger) == (
        LUNG_NODULE, ReportLabelValue.POSITIVE, "affirmed", None)
    assert text[second.target_start:second.target_end] == "nodule"


def test_study_level_positive_beats_uncertain_beats_negative() -> None:
    labels = study_labels("No acute haemorrhage. Possible small SAH. Small nodule cannot be excluded.\n"
                          "Impression: known right upper lobe nodule, unchanged. No pulmonary mass.")
    assert labels[HYPERDENSE_LESION].value is ReportLabelValue.UNCERTAIN
    assert labels[HYPERDENSE_LESION].evidence.sentence.text == "Possible small SAH."
    assert labels[LUNG_NODULE].value is ReportLabelValue.POSITIVE
    assert study_labels("The ventricles are normal.") == {}


def test_history_section_does_not_count_until_the_next_heading() -> None:
    text = "CLINICAL HISTORY: Fall. Query SAH.\nFINDINGS: No intracranial haemorrhage."
    mentions = extract(text)
    assert [(m.counts, m.value) for m in mentions] == [(False, ReportLabelValue.UNCERTAIN),
                                                       (True, ReportLabelValue.NEGATIVE)]
    assert study_labels(text)[HYPERDENSE_LESION].value is ReportLabelValue.NEGATIVE


def test_lines_wrapped_mid_sentence_stay_one_sentence() -> None:
    text = "There is no evidence of acute intracranial\nhaemorrhage or mass effect.\n- Small nodule right apex."
    assert [s.text for s in split_sentences(text)] == [
        "There is no evidence of acute intracranial\nhaemorrhage or mass effect.", "- Small nodule right apex."]
    assert study_labels(text)[HYPERDENSE_LESION].value is ReportLabelValue.NEGATIVE


def test_decimals_and_abbreviations_do_not_end_a_sentence() -> None:
    text = "Mass measures 3.2 cm, e.g. on image 45. No nodule."
    assert [s.text for s in split_sentences(text)] == ["Mass measures 3.2 cm, e.g. on image 45.", "No nodule."]
