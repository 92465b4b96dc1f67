"""Freesound-like metadata for synthetic clips: keywords, Clotho metadata fields, file names."""

import urllib.parse
from typing import Sequence

from hybrid_jax.data.synthetic.text import BACKGROUND_NOUNS, VOCAB, Event, pick

_RECORDERS = (
    "zoom-h4n",
    "zoom",
    "H4n",
    "zoom-h5",
    "tascam",
    "tascam-dr40",
    "dr-05",
    "sony-pcm-m10",
    "rode",
    "ntg2",
    "olympus",
    "marantz-pmd661",
    "iphone",
    "field-recorder",
)
_TECH = (
    "field-recording",
    "fieldrecording",
    "field",
    "recording",
    "stereo",
    "mono",
    "ambience",
    "ambient",
    "atmosphere",
    "atmos",
    "soundscape",
    "sfx",
    "binaural",
    "44.1khz",
    "wav",
    "sound",
    "noise",
    "outdoor",
    "outside",
    "indoor",
    "urban",
    "city",
    "nature",
    "background",
    "loop",
    "raw",
    "unedited",
    "ms",
    "xy",
)
# Non-ASCII latin-1 place names: the metadata CSV is ISO-8859-1, as real Clotho's.
_PLACES_TAGS = (
    "Vienna",
    "Linz",
    "Graz",
    "Salzburg",
    "Austria",
    "Wien",
    "Zürich",
    "Köln",
    "Malmö",
    "München",
    "Berlin",
    "Porto",
    "Lisbon",
    "Barcelona",
    "Helsinki",
    "Tampere",
    "Bretagne",
    "São-Paulo",
    "Kraków",
    "Reykjavík",
    "Montréal",
    "Los",
    "Angeles",
)
EMPTY_KEYWORD_FRACTION = 0.1


def _typo(rng, word: str) -> list[str]:
    """A misspelt tag ("filed-recording") or a word split into fragments ("che;k")."""
    if len(word) < 4:
        return [word]
    i = int(rng.integers(1, len(word) - 1))
    kind = rng.choice(3, p=[0.4, 0.4, 0.2])
    if kind == 0:  # swap two letters
        return [word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]]
    if kind == 1 or not 2 <= i <= len(word) - 3:  # drop a letter
        return [word[:i] + word[i + 1 :]]
    return [word[:i], word[i + 1 :]]  # fragments, the middle letter lost


def keywords(
    rng, events: Sequence[Event], colour: str, all_classes: Sequence[str]
) -> tuple[list, list]:
    """Freesound-like tags and the classes they reveal.

    Partial and noisy on purpose: each event is tagged with probability 0.75, tags come as
    synonyms/plurals/mixed case, distractors (recorder, place, technique) are always there, one
    tag in twenty is misspelt, and one clip in ten names an absent class.
    Returns (tags, revealed class names).
    """
    tags, revealed = [], []
    for ev in events:
        if rng.random() < 0.75:
            revealed.append(ev.name)
            pool = VOCAB[ev.name].tags
            tags += [pool[i] for i in rng.choice(len(pool), int(rng.integers(1, 4)), replace=False)]
    if rng.random() < 0.1:
        absent = [c for c in all_classes if c not in {e.name for e in events}]
        tags.append(pick(rng, VOCAB[pick(rng, absent)].tags))
    if rng.random() < 0.3:
        tags.append(pick(rng, BACKGROUND_NOUNS[colour]).split()[-1])
    if rng.random() < 0.6:
        tags.append(pick(rng, _RECORDERS))
    for i in rng.choice(len(_TECH), int(rng.integers(1, 4)), replace=False):
        tags.append(_TECH[i])
    if rng.random() < 0.5:
        tags.append(pick(rng, _PLACES_TAGS))
    out = []
    for tag in tags:
        out += _typo(rng, tag) if rng.random() < 0.05 else [tag]
    out = list(dict.fromkeys(t for t in out if t))  # Freesound tags are a set
    if rng.random() < 0.4:
        out.sort(key=str.lower)
    else:
        out = [out[i] for i in rng.permutation(len(out))]
    return out, revealed


# ----------------------------------------------------------------------------- metadata fields

_USERS = (
    "fieldrec_anna",
    "Jürgen Moser",
    "simple machines",
    "soundwalker",
    "klangmeister",
    "Mar Audio",
    "noisecollector",
    "josé_ferreira",
    "Björn L",
    "urban-ears",
    "quietplaces",
    "tamperesounds",
    "gregor.w",
    "lindenfield",
    "Hanna Kraus",
    "audio_nomad",
)
_LICENSES = (
    "http://creativecommons.org/licenses/by/3.0/",
    "http://creativecommons.org/publicdomain/zero/1.0/",
    "http://creativecommons.org/licenses/by-nc/3.0/",
    "http://creativecommons.org/licenses/sampling+/1.0/",
)


def metadata_fields(rng, sound_id: int, n_samples: int) -> dict[str, str]:
    """sound_id, sound_link, start_end_samples, manufacturer, license, with Clotho's quirks."""
    user = pick(rng, _USERS)
    if rng.random() < 0.02:
        return {
            "sound_id": "Not found",
            "sound_link": "Not found",
            "start_end_samples": "",
            "manufacturer": user,
            "license": pick(rng, _LICENSES),
        }
    # Freesound links: mostly %-encoded user names, some raw spaces, some without the final "/".
    path_user = user if rng.random() < 0.3 else urllib.parse.quote(user)
    link = f"https://freesound.org/people/{path_user}/sounds/{sound_id}/"
    if rng.random() < 0.2:
        link = link[:-1]
    start = int(rng.integers(0, 40)) * 44100 + int(rng.integers(44100))
    span = "" if rng.random() < 0.05 else f"[{start}, {start + n_samples}]"
    return {
        "sound_id": str(sound_id),
        "sound_link": link,
        "start_end_samples": span,
        "manufacturer": user,
        "license": pick(rng, _LICENSES),
    }


_GENERIC = (
    "ZOOM{n:04d}",
    "STE-{n:03d}",
    "field recording {n}",
    "rec_{n:03d}",
    "ambience {n}",
    "Track {n:02d}",
    "DR{n:04d}",
    "soundscape_{n:02d}",
)
_QUALIFIERS = (
    "morning",
    "night",
    "close",
    "distant",
    "long",
    "short",
    "outside",
    "indoors",
    "01",
    "02",
    "take 2",
    "mono",
    "stereo",
    "edit",
    "loop",
    "raw",
)


def file_stem(rng, events: Sequence[Event], quirk: str) -> str:
    """A Freesound-like file name stem; `quirk` is "", "comma", "amp" or "space".

    Real Clotho names contain commas (quoted in the CSVs), the literal HTML entity "&amp;"
    (the file on disk has the same name) and leading spaces; the preparation code must cope.
    """
    word = lambda ev: pick(rng, VOCAB[ev.name].tags).lower()  # noqa: E731
    style = rng.integers(4)
    if quirk == "amp":
        second = word(events[1]) if len(events) > 1 else pick(rng, _QUALIFIERS)
        return f"{word(events[0]).capitalize()}&amp;{second.capitalize()}"
    if quirk == "comma":
        place = pick(
            rng, ("Vienna", "Linz", "Porto", "Berlin", "park", "street", "garden", "kitchen")
        )
        return f"{word(events[0]).capitalize()} {pick(rng, _QUALIFIERS)}, {place}"
    if style == 0:
        stem = pick(rng, _GENERIC).format(n=int(rng.integers(1, 9999)))
    elif style == 1:
        stem = "_".join([word(ev) for ev in events] + [f"{int(rng.integers(100)):02d}"])
    elif style == 2:
        stem = f"{word(events[0]).capitalize()} {pick(rng, _QUALIFIERS)}"
    else:
        stem = f"{' and '.join(word(ev) for ev in events)} {pick(rng, _QUALIFIERS)}"
    return " " + stem if quirk == "space" else stem
