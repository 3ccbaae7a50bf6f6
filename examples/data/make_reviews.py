"""Write the quickstart's sentiment data set: short product and service reviews, labelled positive/negative.

The project ships its own small data set (examples/data/reviews) so the quickstart runs offline; this script is
how it was made, and rerunning it reproduces the files byte for byte (fixed seed).
"""

import csv
import random
from pathlib import Path

SUBJECTS = [
    "the battery", "the screen", "this blender", "the hotel room", "the delivery", "customer support",
    "the pasta", "this jacket", "the app", "the sound quality", "the keyboard", "the staff", "the coffee",
    "the checkout", "the manual", "this vacuum", "the seats", "the camera", "the mattress", "the update",
]
POSITIVE = [
    "works perfectly", "exceeded my expectations", "is excellent", "was a pleasant surprise", "is fantastic",
    "made my day", "feels sturdy and well made", "was quick and friendly", "is worth every penny",
    "is wonderful", "was delicious", "is reliable", "is a joy to use", "impressed everyone", "is superb",
]
NEGATIVE = [
    "stopped working after a week", "was a huge disappointment", "is terrible", "broke on the first day",
    "is a waste of money", "was rude and slow", "feels cheap and flimsy", "is awful", "never arrived on time",
    "is unreliable", "tasted bland and cold", "is frustrating to use", "made things worse", "is useless",
    "was overpriced and poor",
]
OPENERS = ["", "Honestly, ", "Overall ", "I have to say ", "After a month, ", "To be fair, ", "Sadly, ",
           "Update: ", "Well, "]
CLOSERS = ["", " I would buy it again.", " Never again.", " Five stars.", " One star.", " Would recommend.",
           " Returning it.", ""]
POSITIVE_CLOSERS = {" I would buy it again.", " Five stars.", " Would recommend."}
NEGATIVE_CLOSERS = {" Never again.", " One star.", " Returning it."}


def review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["positive", "negative"])
    phrase = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    closer = rng.choice(CLOSERS)
    # A closer that contradicts the label would make the example noise, not signal.
    if closer in (NEGATIVE_CLOSERS if label == "positive" else POSITIVE_CLOSERS):
        closer = ""
    opener = rng.choice(OPENERS)
    subject = rng.choice(SUBJECTS)
    text = f"{opener}{subject} {phrase}.{closer}"
    return text[0].upper() + text[1:], label


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["text", "label"])
        out.writerows(rows)


def main() -> None:
    rng = random.Random(20261128)
    here = Path(__file__).parent / "reviews"
    here.mkdir(exist_ok=True)
    write(here / "train.csv", [review(rng) for _ in range(800)])
    write(here / "validation.csv", [review(rng) for _ in range(200)])


if __name__ == "__main__":
    main()
