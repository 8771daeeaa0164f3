"""Rule-based finding labels from report text: ConText-style negation, uncertainty, pseudo-triggers, scope.

Why not medspacy: its ConText is the model this follows, but ``pip install medspacy`` (1.3.1) pulls spaCy 3.7
(``spacy<3.8`` on Python 3.11), thinc, blis, PyRuSH built with Cython, QuickUMLS with its own database,
nltk and requests, about 40 packages, and downgrades numpy 2 to 1.26, which the detector's torch build
uses. Its default rules are general clinical English, so the radiology rules below would be written anyway;
it needs no network at run time, but the install alone is out of proportion. So the rules are written here:
one table of triggers, one of targets, one scope algorithm, all in this module.

How a sentence is read (per finding type):

- Targets. ``hyperdense_lesion``: intracranial haemorrhage in any wording (haemorrhage/hemorrhage and
  -agic, haematoma/hematoma, bleed/bleeding, SAH SDH EDH ICH IPH IVH with an optional a-/c- prefix,
  subarachnoid/subdural/extradural/intraventricular/... blood, blood products, hyperdense lesion/focus/area/
  collection, hyperdensity). Microbleeds are an MRI finding and not matched. A target whose site is outside
  the skull (scalp, subgaleal, soft tissue, lung, liver, a dense artery or sinus, ...) right before it or in
  an "in/of the <site>" phrase right after it is left out. ``lung_nodule``: nodule(s), micronodule(s),
  nodular opacity/density/lesion; mass, tumour and lesion only in a sentence that names the lung (lung,
  pulmonary, upper/middle/lower lobe, lingula, hilum, RUL ... LLL, apex, subpleural, bronchus). "Opacity"
  and "ground-glass opacity" are not nodules; "mass effect" and "mass-like" are not masses. Calcified
  nodules and granulomas are left out: benign, and outside the chest model's -100..+60 HU domain.
  Nodules of other organs (thyroid, adrenal, liver, breast, skin, bone ...) are left out the same way.
- Triggers and scope. A pre-trigger ("no", "without", "no evidence of", "negative for", "possible", "?",
  "suspicious for", "may represent", "rule out" ...) reaches forward up to 10 words for negation (lists:
  "no haemorrhage, mass or midline shift"), 6 for uncertainty, 3 for "not" and "?". A post-trigger ("is not
  seen", "has resolved", "ruled out", "cannot be excluded", a "?" right after the word ...) reaches back up
  to 8 words, across commas only when the last comma-separated part holds "and"/"or"/"nor" (a list:
  "haemorrhage, mass or shift is not seen"). Scope ends at a terminator ("but", "however", "although",
  "except", "apart from", "other than", "which", "there is/are", ";", ":"), at the sentence end, and at the
  next pre-trigger (a pre-trigger's scope) or the previous post-trigger (a post-trigger's).
- Overlaps: at each place the longest trigger wins, so "cannot be excluded" (uncertain) hides "excluded"
  (negation) and a pseudo-trigger ("no change", "no interval growth", "not only", "has not resolved",
  "partially resolved", "not seen on the prior study", "likely benign") hides the trigger inside it.
- Value: negated and uncertain together -> uncertain; uncertain -> uncertain; negated -> negative;
  else positive. "Unchanged", "stable", "known" and "previously described" do not lower a finding: an
  unchanged nodule is a nodule. Only a resolution ("has resolved", "no longer seen", "resolution of")
  negates it.
- What does not count: sentences under a history or indication heading ("Clinical history:",
  "Indication:", "Reason for exam:" until the next heading such as "Findings:"), and mentions after
  "history of" / "h/o" / "status post": they say why the study was done or what was, not what it shows.

Study level (:func:`study_labels`): any positive sentence -> positive; else any uncertain -> uncertain;
else negative; a finding type never mentioned gets no label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from node.events import ReportLabelValue

HYPERDENSE_LESION = "hyperdense_lesion"
LUNG_NODULE = "lung_nodule"
FINDING_TYPES = (HYPERDENSE_LESION, LUNG_NODULE)
"""The labels of the shipped model cards (detector/registry/models/*.json)."""


class Kind(StrEnum):
    """What a trigger does to the targets in its scope."""

    NEGATION_PRE = "negation.pre"
    NEGATION_POST = "negation.post"
    UNCERTAIN_PRE = "uncertain.pre"
    UNCERTAIN_POST = "uncertain.post"
    UNCERTAIN_EITHER = "uncertain.either"  # "nodule versus vessel", "vessel versus nodule"
    HISTORICAL_PRE = "historical.pre"
    PSEUDO = "pseudo"
    TERMINATOR = "terminator"


_PRE = (Kind.NEGATION_PRE, Kind.UNCERTAIN_PRE, Kind.HISTORICAL_PRE, Kind.UNCERTAIN_EITHER)
_POST = (Kind.NEGATION_POST, Kind.UNCERTAIN_POST, Kind.UNCERTAIN_EITHER)

_BEFORE = r"(?<![\w'-])"
_AFTER = r"(?![\w'-])"


def _phrases(*phrases: str) -> str:
    """A regex alternation of phrases whose words may be separated by any white space."""
    return "|".join(r"\s+".join(p.split()) for p in sorted(phrases, key=len, reverse=True))


# (kind, regex (case-insensitive), scope in words); the regexes are phrases, bounded by word edges.
_TRIGGERS: list[tuple[Kind, str, int]] = [
    (Kind.NEGATION_PRE, _phrases("no", "without", "free of", "absence of", "neither", "nor",
                                 "negative for", "no evidence of", "no sign of", "no signs of", "no features of",
                                 "no longer", "resolution of", "interval resolution of", "clearance of"), 10),
    (Kind.NEGATION_PRE, _phrases("not", "never"), 3),
    (Kind.NEGATION_POST, _phrases(
        "not seen", "not identified", "not demonstrated", "not visualised", "not visualized", "not visible",
        "not present", "not evident", "not appreciated", "not detected", "not apparent", "not noted",
        "not shown", "no longer seen", "no longer visible", "no longer present", "no longer identified",
        "no longer evident", "no longer demonstrated", "has resolved", "have resolved", "resolved",
        "has disappeared", "have disappeared", "disappeared", "has cleared", "have cleared", "ruled out",
        "excluded", "absent"), 8),
    (Kind.UNCERTAIN_PRE, _phrases(
        "possible", "possibly", "probable", "probably", "likely", "suspected", "suspicion of", "suspicious for",
        "concerning for", "worrisome for", "worrying for", "questionable", "query", "queried", "may represent",
        "might represent", "could represent", "may reflect", "could reflect", "may be", "could be", "might be",
        "may indicate", "suggestive of", "suggests", "suggesting", "raising the possibility of",
        "raises the possibility of", "possibility of", "cannot exclude", "can not exclude", "can't exclude",
        "cannot rule out", "can not rule out", "can't rule out", "rule out", "cannot entirely exclude",
        "cannot completely exclude", "r/o", "to exclude", "equivocal",
        "presumed", "unclear whether", "unclear if", "uncertain whether", "uncertain if", "not clear whether",
        "not clear if", "differential includes", "differential diagnosis includes"), 6),
    (Kind.UNCERTAIN_POST, _phrases(
        "cannot be excluded", "can not be excluded", "can't be excluded", "cannot be ruled out",
        "can not be ruled out", "can't be ruled out", "not excluded", "not ruled out", "is possible",
        "is suspected", "is questioned", "is queried", "is a possibility", "is not excluded", "cannot be confirmed",
        "can not be confirmed", "not be confirmed", "is not certain", "is uncertain")
     + r"|(?:cannot|can\s*not|can't|could\s+not|not)\s+(?:be\s+)?(?:[a-z]+ly\s+)?(?:excluded|ruled\s+out)", 8),
    (Kind.UNCERTAIN_EITHER, _phrases("versus", "vs", "or possibly"), 3),
    (Kind.HISTORICAL_PRE, _phrases("history of", "h/o", "status post", "s/p", "previous history of",
                                   "past history of", "known history of"), 6),
    (Kind.PSEUDO, _phrases("not only", "not necessarily", "gram negative", "not resolved", "not yet resolved",
                           "not fully resolved", "not completely resolved", "not entirely resolved",
                           "has not resolved", "have not resolved", "partially resolved", "partly resolved",
                           "incompletely resolved", "not previously seen", "not previously identified",
                           "not previously demonstrated", "not previously visible", "not clearly seen")
     + r"|no\s+(?:(?:significant|interval|appreciable|definite|further|measurable)\s+)*"
       r"(?:change|changes|growth|increase|enlargement|progression)"
     + r"|without\s+(?:(?:significant|interval|appreciable)\s+)*(?:change|growth|increase|enlargement|progression)"
     + r"|not\s+(?:significantly\s+)?(?:changed|enlarged|increased|grown)"
     + r"|not\s+(?:seen|present|visible|identified|evident|demonstrated)\s+(?:on|in)\s+(?:the\s+)?"
       r"(?:previous|prior|earlier|last|preceding)\s+(?:study|studies|examination|exam|scan|ct|imaging)"
     + r"|(?:likely|probably|possibly|probable|presumed|presumably)\s+(?:benign|granulomatous|inflammatory|"
       r"post-inflammatory|infective|infectious|reactive|malignant|metastatic|neoplastic|chronic|subacute|old|"
       r"primary)", 0),
    (Kind.TERMINATOR, _phrases("but", "however", "although", "though", "except", "apart from", "aside from",
                               "other than", "whereas", "nevertheless", "which", "with the exception of",
                               "there is", "there are", "there has been", "there have been", "there was"), 0),
]
_TRIGGER_RES = [(kind, re.compile(_BEFORE + f"(?:{regex})" + _AFTER, re.IGNORECASE), scope)
                for kind, regex, scope in _TRIGGERS]
_PUNCT_TERMINATOR = re.compile(r"[;:]")
_QUESTION = re.compile(r"\?")
_QUESTION_PRE_SCOPE = 3
_QUESTION_POST_SCOPE = 1

_WORD = re.compile(r"[A-Za-z0-9]+(?:['/-][A-Za-z0-9]+)*")
_LIST_CONJUNCTION = re.compile(r"\b(?:and|or|nor)\b", re.IGNORECASE)


@dataclass(frozen=True)
class _Target:
    """How one finding type is named, and which neighbouring words take a naming out of it."""

    finding_type: str
    always: re.Pattern[str]  # names the finding wherever it is
    in_context: re.Pattern[str] | None  # names it only in a sentence that ``context`` matches
    context: re.Pattern[str] | None
    veto_words: frozenset[str]  # lower case; one of these within 3 words before the target takes it out ...
    rescue: re.Pattern[str]  # ... unless those words also name the right site ("pulmonary or osseous metastases")
    veto_after: re.Pattern[str]  # an "in/of the <site>" right after the target takes it out


def _site_after(sites: str) -> re.Pattern[str]:
    return re.compile(r"^\s*,?\s*(?:in|of|within|involving|over|on|at|around|along)\s+(?:the\s+)?"
                      rf"(?:[\w-]+\s+){{0,2}}?(?:{sites}){_AFTER}", re.IGNORECASE)


_EXTRACRANIAL = ("scalp subgaleal soft tissue tissues subcutaneous periorbital orbital orbit pulmonary alveolar lung "
                 "lungs retroperitoneal retroperitoneum wall muscle muscles intramuscular psoas rectus hepatic liver "
                 "renal kidney splenic spleen adrenal pericardial mediastinal pleural abdominal abdomen pelvic pelvis "
                 "thigh gastrointestinal gi vitreous retinal nasal sinus sinuses maxillary mca artery arteries "
                 "vessel vessels cephalohaematoma cephalohematoma extracranial neck thyroid")
_NON_LUNG = ("thyroid adrenal hepatic liver renal kidney splenic spleen breast subcutaneous cutaneous skin pancreatic "
             "pancreas bone bony osseous sclerotic lytic vertebral calcified calcific brain cerebral intracranial "
             "frontal parietal temporal occipital cerebellar pituitary parotid soft tissue prostate prostatic "
             "scalp vocal cord")
_LUNG_CONTEXT = (r"lungs?|pulmonary|(?:upper|middle|lower)\s+lobes?|lingula|lingular|hil(?:um|ar|a)|perihilar|"
                 r"apex|apices|apical|subpleural|pleural-based|bronch\w*|endobronchial")

_TARGETS = (
    _Target(
        HYPERDENSE_LESION,
        always=re.compile(
            _BEFORE + r"(?:"
            r"(?i:ha?emorrhag(?:e|es|ic))|(?i:ha?ematom(?:a|as|ata))|(?i:re-?)?(?i:bleed(?:s|ing)?)"
            r"|(?:[acAC])?(?:SAH|SDH|EDH|ICH|IPH|IVH)s?"
            r"|(?i:(?:subarachnoid|subdural|extradural|epidural|intraventricular|intraparenchymal|parenchymal|"
            r"intracerebral|intracranial|intra-axial|extra-axial|subpial)\s+blood)"
            r"|(?i:blood\s+products)"
            r"|(?i:blood\s+(?:in|within|layering\s+in)\s+the\s+(?:[\w-]+\s+){0,2}?"
            r"(?:ventricles?|sulci|sulcus|cisterns?|fissures?|horns?))"
            r"|(?i:(?:hyperdense|hyperattenuating)\s+(?:lesions?|focus|foci|areas?|collections?|regions?|clot))"
            r"|(?i:hyperdensit(?:y|ies))"
            r")" + _AFTER),
        in_context=None,
        context=None,
        veto_words=frozenset(_EXTRACRANIAL.split()),
        rescue=re.compile(r"(?i:intracranial|intra-axial|extra-axial|intracerebral|cerebral|subdural|subarachnoid|"
                          r"extradural|epidural|intraventricular|intraparenchymal)"),
        veto_after=_site_after(r"scalp|soft\s+tissues?|subcutaneous\s+tissues?|chest\s+wall|abdominal\s+wall|"
                               r"muscles?|lungs?|(?:upper|middle|lower)\s+lobes?|RUL|RML|RLL|LUL|LLL|lingula|"
                               r"liver|kidneys?|spleen|retroperitoneum|abdomen|pelvis|thigh|orbits?|neck|"
                               r"rectus\s+sheath|psoas|"
                               r"MCA|M1|artery|arteries|vessels?|sinus|sinuses"),
    ),
    _Target(
        LUNG_NODULE,
        always=re.compile(_BEFORE + r"(?i:(?:micro-?)?nodules?|nodular\s+(?:opacity|opacities|density|densities|"
                                    r"lesions?))" + _AFTER),
        in_context=re.compile(_BEFORE + r"(?i:mass|masses|tumou?rs?|lesions?|metastas[ie]s|metastatic\s+deposits?)"
                              + r"(?!\s+effect)" + _AFTER),
        context=re.compile(_BEFORE + rf"(?:(?i:{_LUNG_CONTEXT})|RUL|RML|RLL|LUL|LLL)" + _AFTER),
        veto_words=frozenset(_NON_LUNG.split()),
        rescue=re.compile(rf"(?i:{_LUNG_CONTEXT})|RUL|RML|RLL|LUL|LLL"),
        veto_after=_site_after(r"thyroid|adrenals?|liver|kidneys?|breasts?|spleen|pancreas|brain|skin|"
                               r"subcutaneous\s+tissues?|soft\s+tissues?|bones?|vertebra|vertebral\s+body|"
                               r"prostate|pituitary|parotid|(?:frontal|parietal|temporal|occipital)\s+lobe"),
    ),
)


@dataclass(frozen=True)
class Sentence:
    """A sentence of a report: its span in the whole text and whether it is a history/indication one."""

    start: int
    end: int
    text: str
    history: bool = False


@dataclass(frozen=True)
class Mention:
    """What one sentence says of one naming of a finding type."""

    finding_type: str
    value: ReportLabelValue
    sentence: Sentence
    target: str  # the words that named it, as written
    target_start: int  # in the whole text
    target_end: int
    trigger: str | None  # the trigger that decided the value, as written; None when affirmed by default
    rule: str  # e.g. "negation.pre:no evidence of", "uncertain.post:cannot be excluded", "affirmed"
    counts: bool  # False for a history/indication sentence or a "history of" mention


@dataclass(frozen=True)
class _Trigger:
    kind: Kind
    start: int
    end: int
    text: str
    scope: int


# --- sentences --------------------------------------------------------------------------------------------

_ABBREVIATIONS = frozenset("e.g i.e dr approx vs cf etc fig no nos mr mrs ms prof st sr jr incl resp".split())
_HISTORY_HEADING = re.compile(
    r"^\s*(?:clinical\s+(?:history|details|information|indications?|question|notes)|history|indications?|"
    r"reason\s+for\s+(?:exam|examination|study|request|referral|scan)|request|referral|clinical\s+question|"
    r"question)\s*:", re.IGNORECASE)
_OTHER_HEADING = re.compile(
    r"^\s*(?:findings|impression|conclusions?|comments?|report|technique|comparison|opinion|summary|results?|"
    r"procedure|examination|exam)\s*:", re.IGNORECASE)
_HEADING_INSIDE = re.compile(
    r"(?<=\s)(?=(?:CLINICAL\s+HISTORY|CLINICAL\s+DETAILS|HISTORY|INDICATIONS?|FINDINGS|IMPRESSION|CONCLUSIONS?|"
    r"COMMENTS?|TECHNIQUE|COMPARISON|OPINION|SUMMARY)\s*:)")
_BULLET_LINE = re.compile(r"\n(?=[ \t]*(?:[-*\u2022]|\d+[.)])\s)|\n(?=[ \t]*[A-Za-z][A-Za-z ]{1,40}:)|\n[ \t]*\n")


def _boundaries(text: str) -> list[int]:
    """Where sentences end: '.', '!' (not in a decimal or an abbreviation), '?' before a capital or the end,
    a blank line, a new line that starts a bullet or a heading, and an upper-case heading within a line."""
    cuts: set[int] = set()
    for match in re.finditer(r"[.!]+(?=\s|$)", text):
        before = text[:match.start()]
        word = re.search(r"([A-Za-z.]+)$", before)
        if match.group() == "." and word and word.group(1).lower().rstrip(".") in _ABBREVIATIONS \
                and not re.match(r"\s*(?:\n|$)", text[match.end():]):
            continue
        cuts.add(match.end())
    for match in re.finditer(r"\?+(?=\s+[A-Z]|\s*$)", text):
        cuts.add(match.end())
    for match in _BULLET_LINE.finditer(text):
        cuts.add(match.start())
    for match in re.finditer(r"(?<=[.!?:])[ \t]*\n", text):
        cuts.add(match.end())
    for match in _HEADING_INSIDE.finditer(text):
        cuts.add(match.start())
    return sorted(cuts)


def split_sentences(text: str) -> list[Sentence]:
    """The sentences of ``text`` with their spans; those under a history or indication heading are marked."""
    sentences: list[Sentence] = []
    history = False
    start = 0
    for cut in [*_boundaries(text), len(text)]:
        if cut <= start:
            continue
        chunk = text[start:cut]
        lead = len(chunk) - len(chunk.lstrip())
        body = chunk.strip()
        if body:
            if _HISTORY_HEADING.match(body):
                history = True
            elif _OTHER_HEADING.match(body):
                history = False
            sentences.append(Sentence(start + lead, start + lead + len(body), body, history))
        start = cut
    return sentences


# --- one sentence -----------------------------------------------------------------------------------------

def _triggers(text: str) -> list[_Trigger]:
    """Every trigger in ``text``; where two overlap the longer is kept."""
    found: list[_Trigger] = []
    for kind, regex, scope in _TRIGGER_RES:
        found += [_Trigger(kind, m.start(), m.end(), m.group(), scope) for m in regex.finditer(text)]
    found += [_Trigger(Kind.TERMINATOR, m.start(), m.end(), m.group(), 0) for m in _PUNCT_TERMINATOR.finditer(text)]
    for m in _QUESTION.finditer(text):
        glued = m.start() > 0 and text[m.start() - 1].isalnum()
        kind = Kind.UNCERTAIN_POST if glued else Kind.UNCERTAIN_PRE
        found.append(_Trigger(kind, m.start(), m.end(), "?", _QUESTION_POST_SCOPE if glued else _QUESTION_PRE_SCOPE))
    kept: list[_Trigger] = []
    for trigger in sorted(found, key=lambda t: (-(t.end - t.start), t.start)):
        if all(trigger.end <= k.start or trigger.start >= k.end for k in kept):
            kept.append(trigger)
    return sorted(kept, key=lambda t: t.start)


def _targets(text: str) -> list[tuple[_Target, re.Match[str]]]:
    """Each naming of a finding type in ``text`` that no neighbouring site word takes out."""
    found: list[tuple[_Target, re.Match[str]]] = []
    for target in _TARGETS:
        matches = list(target.always.finditer(text))
        if target.in_context is not None and target.context is not None and target.context.search(text):
            matches += [m for m in target.in_context.finditer(text)
                        if all(m.end() <= o.start() or m.start() >= o.end() for o in matches)]
        for match in matches:
            clause = re.split(r"[,;:.()]", text[:match.start()])[-1]
            before = _WORD.findall(clause)[-3:]
            vetoed = any(word.lower() in target.veto_words for word in before) \
                and not target.rescue.search(" ".join(before))
            if vetoed or target.veto_after.match(text[match.end():]):
                continue
            found.append((target, match))
    return found


def _words(text: str) -> int:
    return len(_WORD.findall(text))


def _applies(trigger: _Trigger, start: int, end: int, triggers: list[_Trigger], text: str) -> bool:
    """Whether ``trigger`` reaches the target at [start, end)."""
    if trigger.kind in _PRE and trigger.end <= start:
        between = (trigger.end, start)
        blockers = (Kind.TERMINATOR, *_PRE)
    elif trigger.kind in _POST and trigger.start >= end:
        between = (end, trigger.start)
        blockers = (Kind.TERMINATOR, *_POST)
        gap = text[end:trigger.start]
        if "," in gap and not _LIST_CONJUNCTION.search(gap.rsplit(",", 1)[1]):
            return False
    else:
        return False
    if _words(text[between[0]:between[1]]) > trigger.scope:
        return False
    return not any(t.kind in blockers and t.start >= between[0] and t.end <= between[1] for t in triggers)


def _value(kinds: set[Kind]) -> ReportLabelValue:
    if kinds & {Kind.UNCERTAIN_PRE, Kind.UNCERTAIN_POST, Kind.UNCERTAIN_EITHER}:
        return ReportLabelValue.UNCERTAIN
    if kinds & {Kind.NEGATION_PRE, Kind.NEGATION_POST}:
        return ReportLabelValue.NEGATIVE
    return ReportLabelValue.POSITIVE


def _read(sentence: Sentence) -> list[Mention]:
    text = sentence.text
    triggers = _triggers(text)
    mentions: list[Mention] = []
    for target, match in _targets(text):
        if any(t.kind is not Kind.TERMINATOR and t.start < match.end() and match.start() < t.end for t in triggers):
            continue  # the words are part of a trigger ("no evidence of" names nothing)
        reaching = sorted((t for t in triggers if t.kind in (*_PRE, *_POST)
                           and _applies(t, match.start(), match.end(), triggers, text)),
                          key=lambda t: min(abs(t.end - match.start()), abs(t.start - match.end())))
        historical = any(t.kind is Kind.HISTORICAL_PRE for t in reaching)
        value = _value({t.kind for t in reaching})
        decided = next((t for t in reaching if _value({t.kind}) is value and t.kind is not Kind.HISTORICAL_PRE), None)
        if historical:
            decided = next(t for t in reaching if t.kind is Kind.HISTORICAL_PRE)
        if decided is None:
            pseudo = next((t for t in triggers if t.kind is Kind.PSEUDO
                           and _words(text[min(t.end, match.end()):max(t.start, match.start())]) <= 8), None)
            trigger_text = pseudo.text if pseudo else None
            rule = f"affirmed.pseudo:{_norm(pseudo.text)}" if pseudo else "affirmed"
        else:
            trigger_text, rule = decided.text, f"{decided.kind}:{_norm(decided.text)}"
        mentions.append(Mention(target.finding_type, value, sentence, match.group(),
                                sentence.start + match.start(), sentence.start + match.end(), trigger_text,
                                rule[:64], counts=not (sentence.history or historical)))
    return mentions


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# --- whole reports ----------------------------------------------------------------------------------------

def extract(text: str) -> list[Mention]:
    """Every mention of a finding type in ``text``, sentence by sentence, in reading order."""
    return [mention for sentence in split_sentences(text) for mention in _read(sentence)]


@dataclass(frozen=True)
class StudyLabel:
    """What a whole report says of one finding type, and the mention that decided it."""

    finding_type: str
    value: ReportLabelValue
    evidence: Mention


_RANK = {ReportLabelValue.POSITIVE: 0, ReportLabelValue.UNCERTAIN: 1, ReportLabelValue.NEGATIVE: 2}


def combine(mentions: Iterable[Mention]) -> dict[str, StudyLabel]:
    """Per finding type: any positive -> positive, else any uncertain -> uncertain, else negative; the first
    mention of the winning value is the evidence. Mentions that do not count are left out."""
    labels: dict[str, StudyLabel] = {}
    for mention in mentions:
        if not mention.counts:
            continue
        held = labels.get(mention.finding_type)
        if held is None or _RANK[mention.value] < _RANK[held.value]:
            labels[mention.finding_type] = StudyLabel(mention.finding_type, mention.value, mention)
    return labels


def study_labels(text: str) -> dict[str, StudyLabel]:
    """What the report ``text`` says of each finding type it mentions."""
    return combine(extract(text))
