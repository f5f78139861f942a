"""A built-in pool of short general-knowledge questions with gold answers: the default retain set (and background)
of :func:`~hf_unlearn.recipes.unlearn_concept` and the CLI, filtered off the concept being unlearned.

The questions span geography, science, history, arts, language, sport, food and everyday facts, so that a retain
set drawn from them keeps a broad slice of what a small instruction model knows.

Example:
    >>> from hf_unlearn.general_knowledge import general_knowledge
    >>> pairs = general_knowledge(exclude="Harry Potter")   # [(question, answer), ...] that never mention it
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

__all__ = ["GENERAL_KNOWLEDGE", "concept_words", "general_knowledge", "mentions"]

#: (question, short gold answer)
GENERAL_KNOWLEDGE: tuple[tuple[str, str], ...] = (
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of Italy?", "Rome"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("Which is the longest river in Africa?", "The Nile"),
    ("On which continent is Brazil?", "South America"),
    ("Which ocean lies between Europe and North America?", "The Atlantic Ocean"),
    ("What is the highest mountain on Earth?", "Mount Everest"),
    ("Which desert is the largest hot desert in the world?", "The Sahara"),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the chemical formula of water?", "H2O"),
    ("How many legs does a spider have?", "Eight"),
    ("What gas do plants absorb from the air?", "Carbon dioxide"),
    ("What is the boiling point of water in degrees Celsius?", "100 degrees"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("What is the closest star to the Earth?", "The Sun"),
    ("What organ pumps blood through the human body?", "The heart"),
    ("How many bones are in the adult human body?", "206"),
    ("What is the freezing point of water in degrees Fahrenheit?", "32 degrees"),
    ("What force keeps us on the ground?", "Gravity"),
    ("What is the hardest natural substance?", "Diamond"),
    ("Who proposed the theory of relativity?", "Albert Einstein"),
    ("Who discovered penicillin?", "Alexander Fleming"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("Who composed the Fifth Symphony that begins with four famous notes?", "Ludwig van Beethoven"),
    ("Who wrote Pride and Prejudice?", "Jane Austen"),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong"),
    ("Who was the first president of the United States?", "George Washington"),
    ("In which year did the Second World War end?", "1945"),
    ("Which ancient civilisation built the pyramids of Giza?", "The ancient Egyptians"),
    ("Which empire was ruled by Julius Caesar?", "The Roman Empire"),
    ("In which city is the Colosseum?", "Rome"),
    ("What is the largest mammal?", "The blue whale"),
    ("What do bees make?", "Honey"),
    ("What is a baby cat called?", "A kitten"),
    ("Which animal is known as the king of the jungle?", "The lion"),
    ("How many days are in a leap year?", "366"),
    ("How many minutes are in an hour?", "Sixty"),
    ("How many continents are there?", "Seven"),
    ("What is the square root of 81?", "Nine"),
    ("What is seven times eight?", "56"),
    ("How many sides does a hexagon have?", "Six"),
    ("What colour do you get by mixing blue and yellow?", "Green"),
    ("What is the opposite of hot?", "Cold"),
    ("What is the plural of mouse?", "Mice"),
    ("Which language has the most native speakers?", "Mandarin Chinese"),
    ("What is the main language spoken in Brazil?", "Portuguese"),
    ("What currency is used in Japan?", "The yen"),
    ("How many players are on a basketball team on the court?", "Five"),
    ("In which sport do players use a racket and a shuttlecock?", "Badminton"),
    ("How often are the Summer Olympic Games held?", "Every four years"),
    ("What is the main ingredient of guacamole?", "Avocado"),
    ("Which fruit is dried to make raisins?", "Grapes"),
    ("What is sushi traditionally wrapped in?", "Seaweed"),
    ("Which instrument has 88 keys?", "The piano"),
    ("What do you call a word that means the same as another word?", "A synonym"),
    ("Which season comes after winter?", "Spring"),
)

# Words that say nothing about which concept a question is about.
_STOPWORDS = frozenset(
    "a an the and or of in on at to for with by from is are was were be it its this that what which who whom how "
    "when where why do does did".split()
)


def concept_words(concept: str) -> set[str]:
    """The content words of a concept's name, lower-cased: ``"Paris and France"`` → ``{"paris", "france"}``."""
    words = {w for w in re.findall(r"[\w']+", concept.lower()) if w not in _STOPWORDS}
    return words or {concept.lower().strip()}


def _singulars(word: str) -> set[str]:
    """The word and its likely singulars (``cities`` → ``city``), so a plural concept name matches singular text."""
    forms = {word}
    if word.endswith("ies") and len(word) > 4:
        forms.add(word[:-3] + "y")
    elif word.endswith("es") and len(word) > 3:
        forms.update((word[:-2], word[:-1]))
    elif word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        forms.add(word[:-1])
    return forms


def mentions(text: str, words: Iterable[str]) -> bool:
    """Whether ``text`` contains any of ``words`` (or their singulars) as a whole word, case-insensitive, plural
    endings allowed."""
    lowered = text.lower()
    forms = {form for w in words for form in _singulars(w.lower())}
    return any(re.search(rf"\b{re.escape(f)}(?:s|es)?\b", lowered) for f in forms)


def general_knowledge(exclude: str | Iterable[str] | None = None) -> list[tuple[str, str]]:
    """The pool's ``(question, answer)`` pairs, minus those whose question or answer mentions ``exclude``: a
    concept name (its content words are matched) or explicit words.

    Example:
        >>> retain = general_knowledge(exclude="The Moon")   # drops "Who was the first person to walk on the Moon?"
        >>> len(retain) < len(GENERAL_KNOWLEDGE)
    """
    if exclude is None:
        return list(GENERAL_KNOWLEDGE)
    words = concept_words(exclude) if isinstance(exclude, str) else {w.lower() for w in exclude}
    return [(q, a) for q, a in GENERAL_KNOWLEDGE if not mentions(f"{q} {a}", words)]


def held_out_questions(concept: str, seen: Iterable[str] = (), n: int = 30, seed: int = 0) -> list[str]:
    """Up to ``n`` questions of the pool that neither mention ``concept`` nor are in ``seen`` (e.g. the background
    questions a locator contrasted against), drawn with ``seed``: side effects are measured on questions nothing was
    tuned to spare.

    Example:
        >>> unrelated = held_out_questions("Harry Potter", seen=background_questions)
        >>> len(unrelated) <= 30
    """
    seen = {q.strip().lower() for q in seen}
    pool = [q for q, _ in general_knowledge(exclude=concept) if q.strip().lower() not in seen]
    random.Random(seed).shuffle(pool)
    return pool[:n]
