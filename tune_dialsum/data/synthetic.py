"""The project's own dialogue-summarization data, generated from templates.

Every sentence here is written for this project; nothing is copied from a
corpus. The dialogues vary in speakers, topics, phrasing and turn count and use
both turn styles of the real data (``Name: text`` and ``#Person1#: text``),
with the occasional multi-line turn. Summaries state the facts the dialogue
settles, so a small model can learn to find them: that is what makes the
bundled demo produce a clearly non-trivial ROUGE-L on a CPU in minutes.

``python -m tune_dialsum.data.synthetic --out data`` writes the bundled set.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pandas as pd

NAMES = [
    "Anna",
    "Tom",
    "Maria",
    "Luke",
    "Sofia",
    "Omar",
    "Julia",
    "Ben",
    "Chloe",
    "Ivan",
    "Nina",
    "Paul",
    "Zoe",
    "Marco",
    "Leah",
    "Sam",
    "Priya",
    "Jack",
    "Emma",
    "Hugo",
    "Lena",
    "Noah",
    "Mia",
    "Kofi",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "tomorrow", "tonight"]
TIMES = ["8 am", "9 am", "10 am", "noon", "1 pm", "3 pm", "5 pm", "6 pm", "7 pm", "8 pm"]
PLACES = [
    "the cafe",
    "the library",
    "the station",
    "the gym",
    "the park",
    "the office",
    "the cinema",
    "the old bakery",
    "the main square",
    "the museum",
    "the pool",
    "the bookshop",
]
ITEMS = [
    "umbrella",
    "laptop charger",
    "bike",
    "drill",
    "camera",
    "blue jacket",
    "tent",
    "keys",
    "notebook",
    "headphones",
    "guitar",
    "ladder",
]
FOODS = ["pizza", "sushi", "pad thai", "a burger", "falafel", "ramen", "a salad", "tacos", "curry", "dumplings"]
CITIES = ["Lisbon", "Oslo", "Rome", "Berlin", "Prague", "Dublin", "Madrid", "Vienna", "Athens", "Kyoto"]
REASONS = ["traffic", "a flat tyre", "a delayed train", "the rain", "a long meeting", "a road closure"]
GIFTS = ["a scarf", "a cookbook", "concert tickets", "a plant", "a board game", "a watch", "a mug"]
OPENERS = ["Hi!", "Hey, are you there?", "Hello :)", "Good morning!", "Hey you", "Quick question."]
REPLIES = ["Hi, what's up?", "Yes, tell me.", "Hey! Sure.", "Morning! What is it?", "I'm here."]
CLOSERS = [
    ("Great, see you!", "See you!"),
    ("Thanks a lot!", "No problem."),
    ("Perfect.", "Bye!"),
    ("Cool, thanks.", "Anytime :)"),
]


def _meeting(rng, a, b):
    place, day, time = rng.choice(PLACES), rng.choice(DAYS), rng.choice(TIMES)
    first = rng.choice(TIMES)
    turns = [
        (a, rng.choice([f"Do you want to meet at {place} {day}?", f"Shall we meet at {place} {day}?"])),
        (b, rng.choice(["Sure, what time?", "Good idea. When?", "Yes! What time suits you?"])),
    ]
    if first != time:
        turns += [
            (a, f"How about {first}?"),
            (b, f"{first} is too early for me. Can we do {time}?"),
            (a, f"OK, {time} works."),
        ]
    else:
        turns += [(a, f"{time}?"), (b, f"{time} is fine.")]
    return turns, f"{a} and {b} will meet at {place} {day} at {time}."


def _borrow(rng, a, b):
    item, day = rng.choice(ITEMS), rng.choice(DAYS)
    turns = [
        (a, rng.choice([f"Can I borrow your {item}?", f"Could you lend me your {item}?"])),
        (b, rng.choice([f"Of course. Do you need it {day}?", f"Sure, when do you need the {item}?"])),
        (a, f"{day.capitalize()} would be great."),
        (b, f"OK, I will bring it {day}."),
    ]
    return turns, f"{b} will lend {a} the {item} {day}."


def _food(rng, a, b):
    food, other = rng.sample(FOODS, 2)
    turns = [
        (a, rng.choice(["I'm ordering dinner. What do you want?", "Food order, what would you like?"])),
        (b, f"Maybe {other}?"),
        (a, f"They are out of {other}."),
        (b, f"Then {food}, please."),
        (a, f"OK, ordering {food} for you."),
    ]
    return turns, f"{a} will order {food} for {b}."


def _lost(rng, a, b):
    item, place = rng.choice(ITEMS), rng.choice(PLACES)
    turns = [
        (a, rng.choice([f"I can't find my {item} anywhere!", f"Have you seen my {item}?"])),
        (b, "Where did you last have it?"),
        (a, f"I think at {place}."),
        (b, f"I found a {item} at {place} yesterday. It must be yours."),
        (a, "Oh, what a relief!"),
    ]
    return turns, f"{b} found {a}'s {item} at {place}."


def _travel(rng, a, b):
    city, day, gift = rng.choice(CITIES), rng.choice(DAYS), rng.choice(GIFTS)
    turns = [
        (a, f"I'm flying to {city} {day}!"),
        (b, rng.choice(["Lucky you! For how long?", "Wow, nice. Work or holiday?"])),
        (a, rng.choice(["Just a week.", "A short holiday."])),
        (b, f"Can you bring me {gift}?"),
        (a, f"Sure, I'll look for {gift} in {city}."),
    ]
    return turns, f"{a} is flying to {city} {day}. {b} wants {gift} from there."


def _late(rng, a, b):
    minutes, reason, place = rng.choice([5, 10, 15, 20, 30, 45]), rng.choice(REASONS), rng.choice(PLACES)
    turns = [
        (a, f"I'm going to be {minutes} minutes late, sorry."),
        (b, "What happened?"),
        (a, f"It's {reason}."),
        (b, f"No worries, I'll wait at {place}."),
    ]
    return turns, f"{a} will be {minutes} minutes late because of {reason}. {b} will wait at {place}."


def _gift(rng, a, b, c):
    gift, day = rng.choice(GIFTS), rng.choice(DAYS)
    turns = [
        (a, f"{c}'s birthday is {day}. Any idea for a present?"),
        (b, rng.choice(["Hmm, not really.", "Let me think."])),
        (a, f"What about {gift}?"),
        (b, f"{c} would love {gift}! Let's buy it together."),
        (a, "Deal, we split the cost."),
    ]
    return turns, f"{a} and {b} will buy {gift} for {c}'s birthday {day}."


def _pickup(rng, a, b, c):
    place, time = rng.choice(PLACES), rng.choice(TIMES)
    turns = [
        (a, f"Can you pick up {c} from {place} at {time}?"),
        (b, rng.choice(["I have a meeting until 4.", "Let me check my calendar."])),
        (a, "Please, I'm stuck at work."),
        (b, f"OK, I'll pick {c} up at {time}."),
    ]
    return turns, f"{b} will pick up {c} from {place} at {time}."


SCENARIOS = [_meeting, _borrow, _food, _lost, _travel, _late, _gift, _pickup]


def generate_dialogue(rng: random.Random, index: int) -> dict:
    scenario = SCENARIOS[index % len(SCENARIOS)]
    a, b, c = rng.sample(NAMES, 3)
    turns, summary = scenario(rng, a, b, c) if scenario.__code__.co_argcount == 4 else scenario(rng, a, b)
    if rng.random() < 0.6:
        turns = [(a, rng.choice(OPENERS)), (b, rng.choice(REPLIES))] + turns
    if rng.random() < 0.6:
        close_a, close_b = rng.choice(CLOSERS)
        turns += [(a, close_a), (b, close_b)]
    lines = [f"{speaker}: {text}" for speaker, text in turns]
    if rng.random() < 0.15:  # a multi-line turn: the continuation line has no speaker
        at = rng.randrange(len(lines))
        lines.insert(at + 1, rng.choice(["Sorry, typo.", "Let me know.", "Just saying."]))
    dialogue = "\n".join(lines)
    if rng.random() < 0.5:  # DialogSum's anonymised turn style
        for tag, name in (("#Person1#", a), ("#Person2#", b)):
            dialogue = dialogue.replace(f"{name}:", f"{tag}:").replace(name, tag)
            summary = summary.replace(name, tag)
    return {"id": f"syn-{index:05d}", "dialogue": dialogue, "summary": summary, "topic": scenario.__name__[1:]}


def generate_dialogues(count: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame([generate_dialogue(rng, i) for i in range(count)])


def write_dataset(out_dir: Path, sizes=(("train", 2400), ("validation", 300), ("test", 300)), seed: int = 0) -> None:
    frame = generate_dialogues(sum(n for _, n in sizes), seed)
    frame = frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, size in sizes:
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for record in frame.iloc[start : start + size].to_dict("records"):
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        start += size


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument("--seed", type=int, default=0)
    write_dataset(parser.parse_args().out, seed=parser.parse_args().seed)
