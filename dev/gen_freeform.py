"""
The tiny synthetic free-form task that ships with the tests (dev/freeform/):
  train.jsonl     {"question", "answer"}: short-phrase questions (EMPO reads only the question)
  eval_free.jsonl {"question", "answer"}: held out, graded by the judge
  eval_mc.jsonl   {"question", "choices", "answer"}: the same facts as 4-option multiple choice,
                  the answer a letter (MMLU-Pro / GPQA style)
Deterministic (fixed seed); rerun with: python3 dev/gen_freeform.py   (standard library only)
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "freeform")

# (question, answer, wrong options)
FACTS = [
    ("What color is the sky on a clear day?", "blue", ["green", "red", "yellow"]),
    ("What color is fresh grass?", "green", ["blue", "purple", "white"]),
    ("What color is snow?", "white", ["black", "orange", "blue"]),
    ("What color is a ripe banana?", "yellow", ["blue", "gray", "pink"]),
    ("What do bees make?", "honey", ["milk", "silk", "wax paper"]),
    ("What do cows drink?", "water", ["milk", "oil", "juice"]),
    ("Which animal says meow?", "a cat", ["a dog", "a cow", "a duck"]),
    ("Which animal says woof?", "a dog", ["a cat", "a sheep", "a horse"]),
    ("Which animal says moo?", "a cow", ["a pig", "a cat", "a bird"]),
    ("What is the opposite of hot?", "cold", ["warm", "big", "fast"]),
    ("What is the opposite of up?", "down", ["left", "over", "high"]),
    ("What is the opposite of day?", "night", ["noon", "week", "sun"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("What do we breathe to live?", "air", ["sand", "oil", "stone"]),
    ("Which star gives Earth its daylight?", "the Sun", ["the Moon", "Mars", "Sirius"]),
    ("How many legs does a spider have?", "eight", ["six", "four", "ten"]),
    ("How many days are in a week?", "seven", ["five", "six", "ten"]),
    ("What falls from clouds when it rains?", "water drops", ["sand", "leaves", "stones"]),
    ("What shape is a ball?", "round", ["square", "flat", "triangular"]),
    ("Where do fish live?", "in water", ["in trees", "in sand", "in the sky"]),
    ("What do you use to write on paper?", "a pen", ["a spoon", "a shoe", "a cup"]),
    ("What is the young of a dog called?", "a puppy", ["a kitten", "a calf", "a foal"]),
    ("What is the young of a cat called?", "a kitten", ["a puppy", "a lamb", "a chick"]),
    ("What season comes after winter?", "spring", ["autumn", "summer", "winter"]),
]

if __name__ == "__main__":
    rng = random.Random(9)
    os.makedirs(OUT, exist_ok=True)
    facts = FACTS[:]
    rng.shuffle(facts)
    train, held = facts[:16], facts[16:]

    def dump(name, rows):
        path = os.path.join(OUT, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)

    dump("train.jsonl", [{"question": q, "answer": a} for q, a, _ in train])
    dump("eval_free.jsonl", [{"question": q, "answer": a} for q, a, _ in held])
    mc = []
    for q, a, wrong in facts:
        opts = [a] + wrong
        rng.shuffle(opts)
        mc.append({"question": q, "choices": opts, "answer": "ABCD"[opts.index(a)]})
    dump("eval_mc.jsonl", mc[:12])
    print(f"{len(train)} train, {len(held)} free-form eval, 12 multiple-choice eval -> {OUT}")
