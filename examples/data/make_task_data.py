"""Write the small synthetic data sets for the token-classification, question-answering, causal-lm and seq2seq
examples: made-up sentences from fixed word lists, so they run offline and owe nothing to public data sets.

    ner/        {tokens, ner_tags}: IOB2 tags for PER, LOC, ORG
    qa/         {question, context, answers: {text, answer_start}}: SQuAD-style, answers located by character
    instruct/   {prompt, response}: small word and arithmetic tasks
    chat/       {messages: [{role, content}]}: a system line and two exchanges
    translate/  {source, target}: toy English to German

Each directory has train.jsonl and validation.jsonl. Rerunning the script reproduces the files byte for byte.
"""

import json
import random
from pathlib import Path

PEOPLE = ["Alice Moreau", "Bruno Keller", "Chen Wei", "Dara Okafor", "Elena Petrova", "Farid Haddad", "Grace Lin",
          "Hugo Silva", "Ines Duarte", "Jonas Berg", "Kavya Rao", "Liam Byrne", "Maya Cohen", "Noah Fischer"]
PLACES = ["Lisbon", "Oslo", "Nairobi", "Kyoto", "Porto Alegre", "Vancouver", "Tallinn", "Cape Town", "San Diego",
          "Lyon", "Mumbai", "Quito", "New Haven", "Rotterdam"]
COMPANIES = ["Northwind Labs", "Bluefin Analytics", "Quarry Robotics", "Tidewater Foods", "Helio Power",
             "Maple Systems", "Orbit Freight", "Cobalt Health", "Juniper Bank", "Saffron Media"]
JOBS = ["engineer", "designer", "chef", "pilot", "teacher", "nurse", "analyst", "architect"]
YEARS = [str(y) for y in range(1998, 2024)]
ANTONYMS = {"hot": "cold", "early": "late", "open": "closed", "light": "heavy", "fast": "slow", "happy": "sad",
            "full": "empty", "loud": "quiet", "rich": "poor", "soft": "hard", "young": "old", "wide": "narrow"}
PLURALS = {"child": "children", "mouse": "mice", "city": "cities", "box": "boxes", "leaf": "leaves",
           "person": "people", "tooth": "teeth", "bus": "buses", "story": "stories", "knife": "knives"}
NOUNS = {"the house": "das Haus", "the dog": "der Hund", "the car": "das Auto", "the cat": "die Katze",
         "the book": "das Buch", "the garden": "der Garten", "the street": "die Straße", "the train": "der Zug",
         "the city": "die Stadt", "the table": "der Tisch"}
ADJECTIVES = {"small": "klein", "big": "groß", "old": "alt", "new": "neu", "red": "rot", "fast": "schnell",
              "quiet": "ruhig", "beautiful": "schön", "cheap": "billig", "clean": "sauber"}
ADVERBS = {"very": "sehr", "quite": "ziemlich", "not": "nicht", "really": "wirklich"}


def tagged(words: str, kind: str | None) -> list[tuple[str, str]]:
    parts = words.split()
    if kind is None:
        return [(w, "O") for w in parts]
    return [(w, ("B-" if i == 0 else "I-") + kind) for i, w in enumerate(parts)]


def ner_row(rng: random.Random) -> dict:
    person, other, place, company = rng.choice(PEOPLE), rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(COMPANIES)
    templates = [
        [(person, "PER"), ("joined", None), (company, "ORG"), ("in", None), (place, "LOC"), (".", None)],
        [(company, "ORG"), ("opened an office in", None), (place, "LOC"), ("last year .", None)],
        [(person, "PER"), ("met", None), (other, "PER"), ("at the", None), (company, "ORG"), ("party .", None)],
        [("the mayor of", None), (place, "LOC"), ("thanked", None), (person, "PER"), (".", None)],
        [("shares of", None), (company, "ORG"), ("rose after", None), (person, "PER"), ("spoke in", None),
         (place, "LOC"), (".", None)],
    ]
    pairs = [pair for words, kind in rng.choice(templates) for pair in tagged(words, kind)]
    return {"tokens": [w for w, _ in pairs], "ner_tags": [t for _, t in pairs]}


def article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def qa_row(rng: random.Random) -> dict:
    people = rng.sample(PEOPLE, 4)
    facts = {p: (rng.choice(PLACES), rng.choice(COMPANIES), rng.choice(JOBS), rng.choice(YEARS)) for p in people}
    sentences = []
    for p, (place, company, job, year) in facts.items():
        sentences += [f"{p} lives in {place}.", f"{p} works as {article(job)} at {company}.",
                      f"{p} moved there in {year}."]
    rng.shuffle(sentences)
    context = " ".join(sentences)
    person = rng.choice(people)
    place, company, job, year = facts[person]
    question, answer, fact = rng.choice([
        (f"Where does {person} live?", place, f"{person} lives in {place}."),
        (f"Which company does {person} work for?", company, f"{person} works as {article(job)} at {company}."),
        (f"What is {person}'s job?", job, f"{person} works as {article(job)} at {company}."),
        (f"When did {person} move?", year, f"{person} moved there in {year}."),
    ])
    start = context.index(fact) + fact.index(answer)
    return {"question": question, "context": context, "answers": {"text": [answer], "answer_start": [start]}}


def instruction(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        word = rng.choice(list(ANTONYMS))
        return f"What is the opposite of '{word}'?", f"The opposite of '{word}' is '{ANTONYMS[word]}'."
    if kind == 1:
        word = rng.choice(list(PLURALS))
        return f"What is the plural of '{word}'?", f"The plural of '{word}' is '{PLURALS[word]}'."
    if kind == 2:
        a, b = rng.randrange(2, 50), rng.randrange(2, 50)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    place = rng.choice(PLACES)
    return f"Write '{place.lower()}' with capital letters.", f"{place.upper()}"


def instruct_row(rng: random.Random) -> dict:
    prompt, response = instruction(rng)
    return {"prompt": prompt, "response": response}


def chat_row(rng: random.Random) -> dict:
    (first, first_reply), (second, second_reply) = instruction(rng), instruction(rng)
    return {"messages": [
        {"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
        {"role": "user", "content": first}, {"role": "assistant", "content": first_reply},
        {"role": "user", "content": f"Thanks. {second}"}, {"role": "assistant", "content": second_reply},
    ]}


def translate_row(rng: random.Random) -> dict:
    noun, adjective = rng.choice(list(NOUNS)), rng.choice(list(ADJECTIVES))
    adverb = rng.choice([None, *ADVERBS])
    english = f"{noun} is {adverb + ' ' if adverb else ''}{adjective} ."
    german = f"{NOUNS[noun]} ist {ADVERBS[adverb] + ' ' if adverb else ''}{ADJECTIVES[adjective]} ."
    return {"source": english[0].upper() + english[1:], "target": german[0].upper() + german[1:]}


SETS = {"ner": (ner_row, 400, 100), "qa": (qa_row, 300, 60), "instruct": (instruct_row, 400, 80),
        "chat": (chat_row, 200, 40), "translate": (translate_row, 400, 80)}


def main() -> None:
    rng = random.Random(20261128)
    for name, (make, train, validation) in SETS.items():
        folder = Path(__file__).parent / name
        folder.mkdir(exist_ok=True)
        for split, n in (("train", train), ("validation", validation)):
            lines = [json.dumps(make(rng), ensure_ascii=False) + "\n" for _ in range(n)]
            (folder / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
