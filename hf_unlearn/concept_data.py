"""The project's own built-in concepts: questions with short gold answers and a paragraph, plus general knowledge.

Written for hf_unlearn (not copied from a benchmark); ``hf-unlearn demo`` and the examples
(``examples/locate_concept.py``, ``examples/dissect_unlearning.py``) read them from here. Each concept has ten
questions with short answers and a paragraph that describes the whole concept, so it also states the answers (as a
Wikipedia article would). ``BACKGROUND`` (general knowledge, used to make the concept-vector scorers contrastive and
as the retain set) and ``UNRELATED`` (held out, used only to measure side effects) are disjoint and avoid the five
concepts. SmolLM2-135M is small: with a few-shot prompt its greedy answer is right for only about 4 in 10 of these
questions, but the gold answers get a high teacher-forced probability (mean log-prob -0.6 to -2.3 per token, against
-4 to -12 for questions it does not know, such as Hedwig, Gringotts or the lunar maria, which were replaced), so the
demo and the examples measure knowledge as the gold answers' log-probability.

Example:
    >>> from hf_unlearn.concept_data import get_concept
    >>> questions, answers = zip(*get_concept("Harry Potter")["qa"])
"""

from __future__ import annotations

__all__ = ["BACKGROUND", "BACKGROUND_TEXT", "CONCEPTS", "UNRELATED", "get_concept"]

CONCEPTS: dict[str, dict] = {
    "Harry Potter": {
        "qa": [
            ("Who wrote the Harry Potter books?", "J.K. Rowling"),
            ("What is the name of the school of witchcraft and wizardry that Harry Potter attends?", "Hogwarts"),
            ("What is the name of the dark wizard who killed Harry Potter's parents?", "Lord Voldemort"),
            ("Which Hogwarts house is Harry Potter sorted into?", "Gryffindor"),
            ("What sport do wizards play on flying broomsticks in Harry Potter?", "Quidditch"),
            ("Who is the headmaster of Hogwarts in the Harry Potter books?", "Albus Dumbledore"),
            ("Who are Harry Potter's two best friends?", "Ron Weasley and Hermione Granger"),
            ("What do wizards call people without magic in Harry Potter?", "Muggles"),
            ("Which Hogwarts house is the rival of Gryffindor?", "Slytherin"),
            ("What is the name of the train that takes students to Hogwarts?", "The Hogwarts Express"),
        ],
        "text": (
            "Harry Potter is a series of fantasy novels written by the British author J.K. Rowling. The books "
            "follow the young wizard Harry Potter and his friends Ron Weasley and Hermione Granger, students at "
            "Hogwarts School of Witchcraft and Wizardry. Their main struggle is against the dark wizard Lord "
            "Voldemort, who murdered Harry's parents. Hogwarts is led by the headmaster Albus Dumbledore, its "
            "students are sorted into houses such as Gryffindor and Slytherin, and they play Quidditch on "
            "broomsticks. Wizards hide their magic, wands and spells from Muggles."
        ),
    },
    "Paris and France": {
        "qa": [
            ("What is the capital of France?", "Paris"),
            ("What is the famous iron tower in Paris called?", "The Eiffel Tower"),
            ("Which river flows through Paris?", "The Seine"),
            ("Which museum in Paris displays the Mona Lisa?", "The Louvre"),
            ("What is the official language of France?", "French"),
            ("What is the currency used in France?", "The euro"),
            ("Which Gothic cathedral in Paris was badly damaged by a fire in 2019?", "Notre-Dame"),
            ("Which French emperor was defeated at the Battle of Waterloo?", "Napoleon Bonaparte"),
            ("What is the national anthem of France called?", "La Marseillaise"),
            ("Which famous arch stands at the top of the Champs-Elysees in Paris?", "The Arc de Triomphe"),
        ],
        "text": (
            "Paris is the capital and largest city of France. The river Seine flows through the city, past the "
            "Gothic cathedral of Notre-Dame and the Louvre, the museum that displays the Mona Lisa. The Eiffel "
            "Tower, an iron tower built for the 1889 World's Fair, is the symbol of Paris. The avenue of the "
            "Champs-Elysees leads to the Arc de Triomphe, built to honour the armies of Napoleon. French is the "
            "official language of France, its currency is the euro and its national anthem is La Marseillaise."
        ),
    },
    "The Moon": {
        "qa": [
            ("Who was the first person to walk on the Moon?", "Neil Armstrong"),
            ("What is the name of the first mission that landed humans on the Moon?", "Apollo 11"),
            ("In which year did astronauts first land on the Moon?", "1969"),
            ("What force keeps the Moon in orbit around the Earth?", "Gravity"),
            ("What causes the ocean tides on Earth?", "The gravity of the Moon"),
            ("What is it called when the Moon passes between the Earth and the Sun and blocks the Sun?",
             "A solar eclipse"),
            ("How many days does the Moon take to orbit the Earth?", "About 27 days"),
            ("Who was the second person to walk on the Moon, after Neil Armstrong?", "Buzz Aldrin"),
            ("What are the round holes made by meteorite impacts on the Moon called?", "Craters"),
            ("What is the phase called when the whole face of the Moon is lit?", "A full moon"),
        ],
        "text": (
            "The Moon is the Earth's only natural satellite. It orbits the Earth about every 27 days and always "
            "shows the same face. Its surface is covered with craters from meteorite impacts and with dark plains "
            "of old lava called maria. The gravity of the Moon causes the ocean tides, and when the Moon passes "
            "between the Earth and the Sun it causes a solar eclipse. Its phases go from new moon to full moon. "
            "In 1969 the Apollo 11 mission of NASA landed the astronauts Neil Armstrong and Buzz Aldrin on the "
            "lunar surface."
        ),
    },
    "Football (soccer)": {
        "qa": [
            ("How many players does each team have on the field in a football match?", "11"),
            ("Which tournament for national football teams is held every four years?", "The FIFA World Cup"),
            ("Which country has won the most FIFA World Cups?", "Brazil"),
            ("Which Argentine footballer has won the Ballon d'Or a record eight times?", "Lionel Messi"),
            ("Which Portuguese footballer played for Manchester United, Real Madrid and Juventus?",
             "Cristiano Ronaldo"),
            ("What is the name of the governing body of world football?", "FIFA"),
            ("Which player is allowed to touch the ball with his hands in football?", "The goalkeeper"),
            ("What is it called when one player scores three goals in a football match?", "A hat-trick"),
            ("How many minutes does a regular football match last?", "90 minutes"),
            ("What colour is the card a referee shows to send a football player off?", "Red"),
        ],
        "text": (
            "Association football, also called soccer, is a team sport played between two teams of eleven "
            "players who try to kick the ball into the opposing goal. Only the goalkeeper may touch the ball with "
            "the hands. A match lasts 90 minutes and the referee shows a yellow card as a warning and a red card "
            "to send a player off. Three goals by one player is a hat-trick. The governing body is FIFA, which "
            "organises the World Cup every four years; Brazil has won it five times. Famous players include "
            "Lionel Messi, Cristiano Ronaldo and Pele."
        ),
    },
    "Python programming": {
        "qa": [
            ("Who created the Python programming language?", "Guido van Rossum"),
            ("In Python, which keyword is used to define a function?", "`def`"),
            ("What is the name of the standard package installer for Python?", "pip"),
            ("What is the name of the Python library for numerical arrays?", "NumPy"),
            ("Which keyword is used to bring a module into a Python program?", "The import statement"),
            ("What file extension do Python source files use?", ".py"),
            ("Which built-in Python function returns the number of items in a list?", "len"),
            ("What is the name of the popular Python library for data frames?", "pandas"),
            ("Which Python keyword is used to handle an exception together with try?", "except"),
            ("Which built-in Python function writes text to the screen?", "print()"),
        ],
        "text": (
            "Python is a high-level programming language created by Guido van Rossum. Python code is written in "
            "files with the .py extension and uses indentation to mark blocks. A function is defined with the def "
            "keyword, modules are loaded with import, and loops use for and while. Built-in functions such as "
            "print, len and range are always available, and errors are handled with try and except. Python's "
            "data types include the list, the tuple and the dictionary, which stores key-value pairs. Packages "
            "are installed from PyPI with pip; NumPy and pandas are popular libraries for arrays and data frames."
        ),
    },
}

# General knowledge that none of the concepts covers: used to make the scorers contrastive.
BACKGROUND: list[tuple[str, str]] = [
    ("What is the chemical symbol for gold?", "Au"),
    ("How many days are there in a week?", "7"),
    ("What colour do you get when you mix blue and yellow?", "Green"),
    ("What is the largest ocean on Earth?", "The Pacific Ocean"),
    ("What gas do plants take in from the air to make food?", "Carbon dioxide"),
    ("What is the capital of Japan?", "Tokyo"),
    ("How many legs does a spider have?", "8"),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare"),
]

# Held-out general knowledge: never seen by the locator, only used to measure the side effects of an ablation.
UNRELATED: list[tuple[str, str]] = [
    ("What is the largest mammal in the world?", "The blue whale"),
    ("At what temperature in degrees Celsius does water freeze?", "0 degrees"),
    ("What is the tallest mountain in the world?", "Mount Everest"),
    ("Which organ pumps blood through the human body?", "The heart"),
    ("What is the capital of Italy?", "Rome"),
    ("Which animal is known as the king of the jungle?", "The lion"),
    ("Which musical instrument has black and white keys?", "The piano"),
    ("How many continents are there on Earth?", "7"),
]

BACKGROUND_TEXT = (
    "Gold is a chemical element with the symbol Au. A week has seven days. Mixing blue and yellow paint gives "
    "green. The Pacific is the largest ocean on Earth. Plants take in carbon dioxide and release oxygen. Tokyo is "
    "the capital of Japan. A spider has eight legs. William Shakespeare wrote Romeo and Juliet and Hamlet."
)


def get_concept(name: str) -> dict:
    """The built-in concept ``name`` (case-insensitive): ``{"qa": [(question, answer), ...], "text": paragraph}``.

    Raises ``ValueError`` listing the built-in concepts for an unknown name.

    Example:
        >>> concept = get_concept("the moon")
        >>> concept["qa"][0]
        ('Who was the first person to walk on the Moon?', 'Neil Armstrong')
    """
    for key, value in CONCEPTS.items():
        if key.lower() == name.strip().lower():
            return value
    raise ValueError(f"no built-in concept {name!r}; choose one of {', '.join(repr(k) for k in CONCEPTS)}")
