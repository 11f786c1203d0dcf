"""Invented words for the built-in world: names of people, places and things from made-up syllables.

Every proper noun in the world is built as onset + vowel (+ coda), two or three syllables, and
checked against `REAL_NAMES`, so a generated person never shares a name with a common real one.
A `Lexicon` hands out each word at most once per world, so a city never shares its name with a
person or a language.

Common nouns and adjectives (professions, genres, book-title words) are ordinary English, which
keeps answers short and readable; only who has which value is invented.
"""

from __future__ import annotations

import random

ONSETS = (
    "b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr",
    "r", "s", "st", "t", "tr", "th", "v", "z", "sh", "j", "qu", "y", "w", "c", "fl",
)
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "ae", "y")
CODAS = ("", "", "", "n", "r", "l", "s", "th", "m", "k", "x", "nd", "rn", "st", "v")
# Endings that make a first name read as feminine or masculine, so parents look plausible.
FEMININE_ENDINGS = ("a", "ia", "el", "ine", "wen", "ra", "ys")
MASCULINE_ENDINGS = ("or", "an", "ric", "us", "en", "ald", "im")

# Common real given names and surnames the generator must never produce (lower case).
REAL_NAMES = frozenset(
    """
    john mary james anna maria david michael robert william richard joseph thomas charles daniel
    matthew anthony mark paul steven andrew joshua kevin brian george edward ronald timothy jason
    jeffrey ryan jacob gary nicholas eric jonathan stephen larry justin scott brandon benjamin samuel
    frank gregory raymond alexander patrick jack dennis jerry tyler aaron jose adam henry nathan
    douglas zachary peter kyle walter ethan jeremy harold keith christian roger noah gerald carl
    terry sean austin arthur lawrence jesse dylan bryan joe jordan billy bruce albert willie gabriel
    logan alan juan wayne roy ralph randy eugene vincent russell elijah louis bobby philip johnny
    patricia jennifer linda elizabeth barbara susan jessica sarah karen nancy lisa betty margaret
    sandra ashley kimberly emily donna michelle dorothy carol amanda melissa deborah stephanie
    rebecca sharon laura cynthia kathleen amy shirley angela helen brenda pamela nicole emma
    samantha katherine christine debra rachel catherine carolyn janet ruth heather diane virginia
    julie joyce victoria olivia kelly christina lauren joan evelyn judith megan cheryl andrea hannah
    martha jacqueline frances gloria ann teresa kathryn sara janice jean alice madison doris abigail
    julia judy grace denise amber marilyn beverly danielle theresa sophia marie diana brittany
    natalie isabella charlotte rose alexis kayla lena mara nora dana tara vera ella mia ava zoe
    luna lara nina tina sam max leo ian ivan igor omar ali eva ida ada ira una yara kai ben tom
    smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez lopez
    gonzalez wilson anderson taylor moore jackson martin lee perez thompson white harris sanchez
    clark ramirez lewis robinson walker young allen king wright torres nguyen hill flores green
    adams nelson baker hall rivera campbell mitchell carter roberts kim wang li zhang liu chen
    yang huang zhao wu zhou xu sun ma zhu hu guo he lin luo muller schmidt schneider fischer weber
    meyer wagner becker schulz hoffmann rossi russo ferrari esposito bianchi romano silva santos
    """.split()
)


class Lexicon:
    """A seeded source of fresh invented words; no word is handed out twice."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def _syllable(self, coda: bool) -> str:
        return self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + (self.rng.choice(CODAS) if coda else "")

    def word(self, syllables: tuple[int, int] = (2, 2), ending: str = "", max_len: int = 8) -> str:
        """A fresh capitalised word of `syllables` (min, max) syllables, with an optional fixed ending."""
        for _ in range(10_000):
            n = self.rng.randint(*syllables)
            stem = "".join(self._syllable(coda=i == n - 1 and not ending) for i in range(n))
            word = (stem + ending).capitalize()
            if 4 <= len(word) <= max_len and word.lower() not in REAL_NAMES and word not in self.used:
                self.used.add(word)
                return word
        raise RuntimeError("ran out of fresh words; the syllable inventory is too small")

    def words(self, n: int, syllables: tuple[int, int] = (2, 2), ending: str = "") -> list[str]:
        return [self.word(syllables, ending) for _ in range(n)]

    def first_name(self, feminine: bool) -> str:
        endings = FEMININE_ENDINGS if feminine else MASCULINE_ENDINGS
        return self.word((1, 1), ending=self.rng.choice(endings))

    def surname(self) -> str:
        return self.word((2, 3), max_len=9)


# Ordinary English vocabularies for the typed attributes that need no invented words.
PROFESSIONS = (
    "baker", "cartographer", "clockmaker", "glassblower", "beekeeper", "lighthouse keeper", "botanist",
    "tailor", "shipwright", "astronomer", "archivist", "potter", "violin maker", "stonemason",
    "pharmacist", "surveyor", "bookbinder", "weaver", "brewer", "blacksmith", "jeweller", "locksmith",
    "engraver", "falconer", "gardener", "translator", "printer", "saddler", "cooper", "chemist",
    "geologist", "puppeteer", "perfumer", "tanner", "dyer", "ferryman", "chandler", "miller", "fisher",
    "carpenter", "shepherd", "cobbler", "barber", "butcher", "glazier", "thatcher", "wheelwright",
    "silversmith", "goldsmith", "candlemaker", "rope maker", "hatter", "furrier", "lacemaker", "toymaker",
    "organ builder", "bell founder", "innkeeper", "librarian", "surgeon", "midwife", "notary",
    "auctioneer", "zookeeper", "vintner", "cheesemaker", "florist", "mapmaker", "sculptor", "welder",
)
# Genres are a style and a form ("comic poetry"), so there are enough of them for every person.
GENRE_STYLES = ("comic", "dark", "historical", "gentle", "modern", "rural", "urban", "epic")
GENRE_FORMS = ("poetry", "mystery", "romance", "fantasy", "drama", "satire", "fables", "memoirs", "thrillers",
               "plays")
TITLE_ADJECTIVES = (
    "Silent", "Hollow", "Crimson", "Distant", "Broken", "Golden", "Hidden", "Quiet", "Frozen", "Burning",
    "Lonely", "Ancient", "Restless", "Gentle", "Bitter", "Endless", "Pale", "Wandering", "Sunken",
    "Painted", "Forgotten", "Iron", "Velvet", "Salt", "Glass", "Paper", "Amber", "Last", "Second", "Wild",
)
TITLE_NOUNS = (
    "Orchard", "River", "Lantern", "Harbour", "Garden", "Mirror", "Tower", "Winter", "Kingdom", "Bridge",
    "Forest", "Letter", "Compass", "Island", "Meadow", "Chapel", "Voyage", "Feather", "Clock", "Shore",
    "Valley", "Candle", "Thread", "Window", "Crown", "Storm", "Journey", "Map", "Song", "Door",
)
INSTRUMENTS = (
    "harp", "cello", "oboe", "lute", "flute", "viola", "bassoon", "zither", "banjo", "trumpet",
    "clarinet", "mandolin", "harpsichord", "accordion", "dulcimer", "bagpipes", "tuba", "sitar",
    "marimba", "recorder", "trombone", "fiddle", "ukulele", "organ", "piccolo", "xylophone", "cornet",
    "lyre", "tambourine", "bugle",
)
HOBBIES = (
    "chess", "sailing", "fencing", "archery", "birdwatching", "knitting", "rowing", "climbing",
    "gardening", "fishing", "pottery", "juggling", "calligraphy", "origami", "skating", "cycling",
    "hiking", "painting", "stargazing", "woodcarving", "beekeeping", "dancing", "riddles", "kite flying",
    "baking", "swimming", "embroidery", "singing", "cartography", "puzzles",
)
COLOURS = (
    "crimson", "teal", "ochre", "violet", "amber", "indigo", "scarlet", "olive", "maroon", "turquoise",
    "saffron", "lilac", "cobalt", "rust", "emerald", "charcoal", "ivory", "coral", "magenta", "sepia",
    "jade", "plum", "cream", "mustard", "silver", "bronze", "navy", "peach", "mauve", "beige",
)
DISH_WORDS = ("stew", "bread", "soup", "pie", "cake", "dumplings", "broth", "tart", "porridge", "noodles")
AWARD_WORDS = ("Prize", "Medal", "Award", "Laurel", "Cup")
SCHOOL_WORDS = ("Academy", "College", "Institute", "University")
PRESS_WORDS = ("Press", "House", "Books", "Editions")
LANGUAGE_ENDINGS = ("ish", "ese", "ic", "ian")
# Things and places for the general-knowledge (utility) sets.
CREATURE_KINDS = ("bird", "fish", "beetle", "lizard", "moth", "frog", "deer", "flower", "tree", "mushroom")
FOODS = (
    "seeds", "berries", "moss", "insects", "leaves", "roots", "nectar", "worms", "bark", "snails",
    "grass", "algae", "fruit", "pollen", "fungi",
)
HABITATS = (
    "marshes", "caves", "cliffs", "deserts", "glaciers", "meadows", "reefs", "swamps", "dunes",
    "canyons", "lagoons", "moors", "jungles", "tundra", "riverbanks",
)
