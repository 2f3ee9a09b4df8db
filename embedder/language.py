"""A light language signal for statistics: the dominant Unicode script of a text.

Used only when the documents carry no language column (``source.lang_column``): the run
summary then groups token statistics by script (``script:Latin``, ``script:Han``, ...),
which is what tokenization cost depends on most.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

# The first word of a letter's Unicode name is its script for the scripts that matter here.
_ALIASES = {"CJK": "Han", "HIRAGANA": "Kana", "KATAKANA": "Kana", "KATAKANA-HIRAGANA": "Kana", "HALFWIDTH": "Kana",
            "HANGUL": "Hangul", "LATIN": "Latin",
            "CYRILLIC": "Cyrillic", "ARABIC": "Arabic", "DEVANAGARI": "Devanagari", "GREEK": "Greek",
            "HEBREW": "Hebrew", "THAI": "Thai", "BENGALI": "Bengali", "TAMIL": "Tamil", "GEORGIAN": "Georgian",
            "ARMENIAN": "Armenian", "ETHIOPIC": "Ethiopic", "GUJARATI": "Gujarati", "TELUGU": "Telugu"}


def dominant_script(text: str, sample: int = 200) -> str:
    """``script:<name>`` of the most frequent script among the first ``sample`` letters.

    Japanese mixes Han, Kana and often Latin words: text with Kana where Han and Kana make up at
    least 30% of the letters counts as ``script:Kana`` (Japanese).

    Example:
        >>> dominant_script("Привет, мир")
        'script:Cyrillic'
    """
    counts: Counter[str] = Counter()
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        counts[_ALIASES.get(name.split(" ", 1)[0], "Other")] += 1
        if sum(counts.values()) >= sample:
            break
    if not counts:
        return "script:none"
    if counts["Kana"] and (counts["Kana"] + counts["Han"]) >= 0.3 * sum(counts.values()):
        return "script:Kana"
    return "script:" + counts.most_common(1)[0][0]
