"""Caption vocabulary (class synonyms) and caption generation for synthetic clips."""

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Event:
    """One sound event in a scene, as the captions and keywords see it."""

    name: str  # class name, a key of VOCAB
    onset_s: float
    duration_s: float
    loudness: str  # "loud" | "normal" | "faint" (from the applied gain)
    distance: str  # "near" | "mid" | "far" (far events are also low-passed and echoed)

    @property
    def end_s(self) -> float:
        return self.onset_s + self.duration_s


@dataclasses.dataclass(frozen=True)
class ClassText:
    subjects: tuple[str, ...]  # singular noun phrases with their article: "a dog"
    verbs: tuple[str, ...]  # third person singular present: "barks"
    gerunds: tuple[str, ...]  # for "... can be heard barking"
    nominals: tuple[str, ...]  # action noun phrases without a leading article: "barking of a dog"
    tags: tuple[str, ...]  # Freesound-style keywords for the class


def _ct(subjects, verbs, gerunds, nominals, tags) -> ClassText:
    return ClassText(*(tuple(v.split("|")) for v in (subjects, verbs, gerunds, nominals, tags)))


# Several synonyms per class so captions relate to keywords by meaning, not by one fixed word.
VOCAB: dict[str, ClassText] = {
    "dog_bark": _ct(
        "a dog|a hound|a puppy|a small dog|a guard dog",
        "barks|yelps|is barking|barks repeatedly|keeps barking|woofs",
        "barking|yelping",
        "barking of a dog|dog barking|yelps from a hound|barks of a dog|puppy yelping",
        "dog|dogs|Dog|bark|barking|canine|hound|woof|animal|pet",
    ),
    "bird_chirp": _ct(
        "a bird|a songbird|a small bird|a sparrow|a blackbird",
        "chirps|tweets|sings|is chirping|whistles|twitters",
        "chirping|tweeting|singing|twittering",
        "bird chirps|chirping of a bird|birdsong|tweets from a songbird|bird calls",
        "bird|birds|Birds|birdsong|chirp|chirping|tweet|songbird|nature|spring",
    ),
    "rain": _ct(
        "rain|the rain|a rain shower|drizzle|a downpour",
        "falls|patters|pours down|falls steadily|is falling|drips and patters",
        "falling|pattering|pouring down",
        "falling rain|the patter of rain|rainfall|raindrops pattering|rain pattering",
        "rain|Rain|raining|rainfall|drops|raindrops|weather|wet|drizzle|shower",
    ),
    "engine": _ct(
        "an engine|a motor|a car engine|a truck engine|a diesel engine",
        "idles|rumbles|hums|drones|runs|is running|idles steadily",
        "idling|rumbling|humming|droning|running",
        "rumbling of an engine|engine noise|motor droning|engine idling|droning from a motor",
        "engine|motor|Engine|idle|idling|diesel|truck|car|machine|vehicle",
    ),
    "church_bell": _ct(
        "a bell|a church bell|a large bell|a bronze bell|a tower bell",
        "rings|tolls|chimes|is ringing|rings out|clangs",
        "ringing|tolling|chiming",
        "bell ringing|tolling of a bell|chimes from a church bell|church bells ringing"
        "|ringing of a bell",
        "bell|bells|Bell|church|church-bell|churchbell|chime|chimes|tolling|tower",
    ),
    "siren": _ct(
        "a siren|an ambulance siren|a police siren|an emergency siren|a fire truck siren",
        "wails|blares|sounds|is wailing|howls|wails up and down",
        "wailing|blaring|sounding",
        "wailing of a siren|siren noise|blaring from an ambulance siren|sirens blaring"
        "|sirens wailing",
        "siren|sirens|Siren|ambulance|police|emergency|alarm|firetruck|traffic",
    ),
    "footsteps": _ct(
        "a person|someone|a pedestrian|a man|a woman",
        "walks|walks by|takes steps|walks steadily|is walking|paces around",
        "walking|stepping|pacing",
        "footsteps|footsteps of a person|walking footsteps|steps on the ground|shoes stepping",
        "footsteps|footstep|Footsteps|steps|walking|walk|shoes|feet|floor|gravel",
    ),
    "stream": _ct(
        "water|a stream|a brook|a creek|a small stream",
        "flows|trickles|babbles|gurgles|runs|is flowing",
        "flowing|trickling|babbling|gurgling",
        "flowing water|trickling water|water gurgling|babbling of a brook|stream water running",
        "water|Water|stream|brook|creek|river|flowing|trickle|flowing-water|babbling",
    ),
    "wind": _ct(
        "the wind|wind|a breeze|a gust of wind|the breeze",
        "blows|howls|gusts|whistles|is blowing|rushes by",
        "blowing|howling|gusting|whistling",
        "blowing wind|wind gusts|howling wind|gusting wind|wind noise",
        "wind|Wind|windy|gust|gusts|breeze|howling|air|blowing|weather",
    ),
    "beeping": _ct(
        "a device|a machine|an alarm|a timer|a monitor",
        "beeps|beeps repeatedly|emits beeps|is beeping|bleeps",
        "beeping|bleeping",
        "electronic beeping|beeps from a machine|beeping of a device|repeated beeps|bleeps",
        "beep|beeps|Beep|beeping|electronic|alarm|signal|tone|timer|device",
    ),
    "clapping": _ct(
        "a person|someone|a man|a woman|a spectator",
        "claps|claps hands|is clapping|claps rhythmically|keeps clapping",
        "clapping|clapping hands",
        "hand claps|hands clapping|clapping of hands|rhythmic clapping|applause",
        "clap|claps|clapping|Clapping|hands|applause|handclap|hand-clap|rhythm",
    ),
    "door_knock": _ct(
        "someone|a person|a visitor|a neighbor|a man",
        "knocks on a door|knocks at the door|raps on a wooden door|is knocking on a door|knocks",
        "knocking on a door|knocking",
        "knocking on a door|door knocks|knocks on a wooden door|rapping on a door|knocking",
        "door|Door|knock|knocking|knocks|wood|wooden-door|house|visitor",
    ),
    "typing": _ct(
        "someone|a person|a typist|an office worker|a writer",
        "types on a keyboard|is typing|types away|taps on a keyboard|types on a computer",
        "typing|typing on a keyboard",
        "keyboard typing|typing on a keyboard|keyboard clicks|clacking of keys|keys clicking",
        "keyboard|Keyboard|typing|type|keys|computer|office|laptop|clicks|typewriter",
    ),
    "thunder": _ct(
        "thunder|a thunderstorm|a storm|the thunder|a thunderclap",
        "rumbles|roars|crashes|booms|rolls|cracks and rumbles",
        "rumbling|roaring|booming|rolling",
        "rumbling thunder|thunder rumbling|thunder claps|rolling thunder|booming thunder",
        "thunder|Thunder|storm|thunderstorm|weather|rumble|lightning|Storm|thunderclap",
    ),
    "crickets": _ct(
        "a cricket|an insect|a field cricket|a grasshopper|a small insect",
        "chirps|is chirping|trills|chirps steadily|buzzes",
        "chirping|trilling",
        "cricket chirps|chirping of crickets|insects chirping|crickets trilling|insect noises",
        "cricket|crickets|Crickets|insect|insects|night|chirp|cicada|summer|nature",
    ),
    "speech": _ct(
        "a man|a woman|a person|someone|a voice",
        "talks|speaks|murmurs|is talking|mumbles|speaks indistinctly|chatters",
        "talking|speaking|murmuring|mumbling",
        "indistinct speech|murmuring voice|human speech|talking|chatter",
        "speech|voice|voices|talking|people|Talking|conversation|talk|chatter|Voice",
    ),
    "car_horn": _ct(
        "a car|a truck|a vehicle|a van|a taxi",
        "honks|honks its horn|sounds its horn|blasts its horn|is honking",
        "honking",
        "car horns honking|honking of a car horn|horn blasts|horn honking|car honking",
        "horn|car|car-horn|honk|honking|traffic|Car|vehicle|street|Horn",
    ),
    "clock_tick": _ct(
        "a clock|a wall clock|an old clock|a pendulum clock|a watch",
        "ticks|is ticking|ticks steadily|tick-tocks|ticks away",
        "ticking",
        "clock ticking|ticking of a clock|steady ticking|tick tock of a clock"
        "|ticks from a wall clock",
        "clock|Clock|ticking|tick|tock|tick-tock|time|pendulum|watch|clockwork",
    ),
    "phone_ring": _ct(
        "a phone|a telephone|an old telephone|a landline phone|a desk phone",
        "rings|is ringing|rings repeatedly|keeps ringing|trills",
        "ringing",
        "phone ringing|ringing of a telephone|telephone rings|ring tones from a phone"
        "|phone trilling",
        "phone|telephone|Phone|ring|ringing|ringtone|old-phone|call|landline",
    ),
    "hammering": _ct(
        "a worker|a carpenter|someone|a person|a builder",
        "hammers|hammers a nail|pounds with a hammer|is hammering|bangs a hammer on metal",
        "hammering|pounding",
        "hammering|hammer blows|banging of a hammer|metal hammering|pounding of a hammer",
        "hammer|hammering|Hammer|construction|nail|metal|tools|workshop|diy|banging",
    ),
}

_ADVERBS = {"loud": ("loudly", "very loudly", "noisily"), "faint": ("faintly", "softly", "quietly")}
_ADJECTIVES = {"loud": ("loud", "noisy"), "faint": ("faint", "soft", "quiet")}
_PLACES = {
    "near": ("nearby", "close by", "up close", "close to the microphone"),
    "far": ("in the distance", "far away", "from afar", "somewhere in the distance"),
}
_SEQ_VERB = (", then ", " and then ", " before ", ", and afterwards ", ", after which ")
_SEQ_NOMINAL = (", followed by ", " followed by ", ", succeeded by ")
_OVERLAP_VERB = (" while ", " as ", " and ", " whilst ")
_OVERLAP_NOMINAL = (", with ", " along with ", " over ", " accompanied by ")
# Background level adjectives avoid "faint"/"loud" so those words always refer to an event.
_BG_ADJ = {"low": ("light", "low", "subtle"), "high": ("steady", "constant", "persistent")}
BACKGROUND_NOUNS = {
    "white": ("hiss", "static"),
    "pink": ("noise", "room tone"),
    "brown": ("rumble", "hum"),
}
_BG_FORMS = (
    "over a {adj} background {noun}",
    "with {adj} {noun} in the background",
    "against a {adj} {noun}",
    "over {adj} {noun}",
)
_FILLERS = ("in this recording", "in the clip", "throughout the recording", "on this recording")
MIN_WORDS, MAX_WORDS = 8, 20


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def relation(a: Event, b: Event) -> str:
    """ "seq" when `b` starts after `a` has (nearly) ended, else "overlap"."""
    return "seq" if b.onset_s >= a.end_s - 0.25 else "overlap"


def _modifiers(rng, ev: Event, clip_s: float, adverb: bool) -> tuple[str, str]:
    """(loudness word, trailing place/time phrase), each possibly empty, never contradicting."""
    loud = ""
    if ev.loudness in _ADVERBS and rng.random() < 0.6:
        loud = pick(rng, (_ADVERBS if adverb else _ADJECTIVES)[ev.loudness])
    tail = []
    if ev.distance in _PLACES and rng.random() < 0.6:
        tail.append(pick(rng, _PLACES[ev.distance]))
    if rng.random() < 0.3:
        if ev.duration_s > 0.85 * clip_s:
            tail.append(pick(rng, ("throughout", "the whole time", "continuously")))
        elif ev.duration_s < 2.5:
            tail.append(pick(rng, ("briefly", "for a moment")))
        elif ev.onset_s < 1.0 and ev.end_s < 0.6 * clip_s:
            tail.append(pick(rng, ("at the beginning", "at first", "at the start")))
        elif ev.onset_s > 0.5 * clip_s:
            tail.append(pick(rng, ("towards the end", "near the end", "later on")))
    return loud, " ".join(tail)


def _clause(rng, ev: Event, clip_s: float, form: str) -> str:
    """One event as a clause of form "verb" ("a dog barks loudly nearby"), "heard"
    ("a dog can be heard barking"), "nominal" ("barking of a dog") or "nominal_heard"."""
    v = VOCAB[ev.name]
    if form in ("nominal", "nominal_heard"):
        adj, tail = _modifiers(rng, ev, clip_s, adverb=False)
        words = [
            adj,
            pick(rng, v.nominals),
            "can be heard" if form == "nominal_heard" else "",
            tail,
        ]
    elif form == "heard":
        adv, tail = _modifiers(rng, ev, clip_s, adverb=True)
        words = [pick(rng, v.subjects), "can be heard", pick(rng, v.gerunds), adv, tail]
    else:
        adv, tail = _modifiers(rng, ev, clip_s, adverb=True)
        words = [pick(rng, v.subjects), pick(rng, v.verbs), adv, tail]
    return " ".join(w for w in words if w)


def _background_phrase(rng, colour: str, level: str) -> str:
    form = pick(rng, _BG_FORMS)
    return form.format(adj=pick(rng, _BG_ADJ[level]), noun=pick(rng, BACKGROUND_NOUNS[colour]))


def _sentence(rng, events: Sequence[Event], clip_s: float, colour: str, level: str) -> str:
    first_form = pick(rng, ("verb", "verb", "verb", "heard", "nominal"))
    if first_form == "nominal" and (len(events) == 1 or rng.random() < 0.3):
        first_form = "nominal_heard"  # a lone noun phrase is not a sentence
    parts = [_clause(rng, events[0], clip_s, first_form)]
    rels = [relation(a, b) for a, b in zip(events, events[1:])]
    if len(events) == 2 and rels[0] == "overlap" and first_form == "verb" and rng.random() < 0.25:
        # "While rain falls, a dog barks": subordinate clause first.
        first, second = (_clause(rng, ev, clip_s, "verb") for ev in events)
        return f"While {first}, {second}"
    for ev, rel in zip(events[1:], rels):
        nominal = rng.random() < 0.35
        if rel == "seq":
            conn = pick(rng, _SEQ_NOMINAL if nominal else _SEQ_VERB)
        else:
            conn = pick(rng, _OVERLAP_NOMINAL if nominal else _OVERLAP_VERB)
        parts.append(conn + _clause(rng, ev, clip_s, "nominal" if nominal else "verb"))
    text = "".join(parts)
    if rng.random() < 0.3 and " over " not in text:
        text += " " + _background_phrase(rng, colour, level)
    return text


def _finish(text: str) -> str:
    text = text.strip().rstrip(",")
    return text[0].upper() + text[1:] + "."


def caption(
    rng, events: Sequence[Event], clip_s: float, colour: str, level: str, taken: set
) -> str:
    """A caption of 8-20 words for `events` (sorted by onset) that is not in `taken`.

    The DCASE scorer identifies a query by its text, so a split must not repeat a caption: on a
    collision a new random wording is drawn, and after many tries a background/filler phrase is
    appended to force a variation.
    """
    for attempt in range(400):
        text = _sentence(rng, events, clip_s, colour, level)
        has_bg = " background " in text or any(f" {f} " in text for f in ("over", "against"))
        if (attempt >= 100 or len(text.split()) < MIN_WORDS) and not has_bg:
            text += " " + _background_phrase(rng, colour, level)
        if attempt >= 200 or len(text.split()) < MIN_WORDS:
            text += " " + pick(rng, _FILLERS)
        if len(text.split()) < MIN_WORDS:
            continue
        text = _finish(text)
        if len(text.split()) <= MAX_WORDS and text not in taken:
            return text
    raise RuntimeError(f"no unique caption found for {[e.name for e in events]}")
