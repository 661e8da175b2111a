"""The spoken-question data set of the real-model quickstart: short factual questions with
one-sentence answers, in a few families (capitals, colours, arithmetic in words, days and
months, animals and opposites). Validation questions are new instances of the training
families, so a model that learned to *hear* the question can answer them; one that only
memorised answers cannot.
"""
from __future__ import annotations

# (id, question, answer)
TRAIN: list[tuple[str, str, str]] = [
    ("cap_france", "What is the capital of France?", "The capital of France is Paris."),
    ("cap_germany", "What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("cap_italy", "What is the capital of Italy?", "The capital of Italy is Rome."),
    ("cap_spain", "What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("cap_russia", "What is the capital of Russia?", "The capital of Russia is Moscow."),
    ("cap_egypt", "What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("cap_china", "What is the capital of China?", "The capital of China is Beijing."),
    ("cap_canada", "What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("cap_greece", "What is the capital of Greece?", "The capital of Greece is Athens."),
    ("cap_portugal", "What is the capital of Portugal?", "The capital of Portugal is Lisbon."),
    ("cap_ireland", "What is the capital of Ireland?", "The capital of Ireland is Dublin."),
    ("cap_norway", "What is the capital of Norway?", "The capital of Norway is Oslo."),
    ("cap_austria", "What is the capital of Austria?", "The capital of Austria is Vienna."),
    ("cap_england", "What is the capital of England?", "The capital of England is London."),
    ("col_sky", "What color is the sky on a clear day?", "The sky is blue."),
    ("col_grass", "What color is grass?", "Grass is green."),
    ("col_snow", "What color is snow?", "Snow is white."),
    ("col_banana", "What color is a ripe banana?", "A ripe banana is yellow."),
    ("col_coal", "What color is coal?", "Coal is black."),
    ("col_strawberry", "What color is a strawberry?", "A strawberry is red."),
    ("col_carrot", "What color is a carrot?", "A carrot is orange."),
    ("col_tomato", "What color is a ripe tomato?", "A ripe tomato is red."),
    ("math_2p3", "What is two plus three?", "Two plus three is five."),
    ("math_4p4", "What is four plus four?", "Four plus four is eight."),
    ("math_1p6", "What is one plus six?", "One plus six is seven."),
    ("math_5p5", "What is five plus five?", "Five plus five is ten."),
    ("math_9m4", "What is nine minus four?", "Nine minus four is five."),
    ("math_8m6", "What is eight minus six?", "Eight minus six is two."),
    ("math_7m3", "What is seven minus three?", "Seven minus three is four."),
    ("math_3x3", "What is three times three?", "Three times three is nine."),
    ("math_2x4", "What is two times four?", "Two times four is eight."),
    ("math_3x2", "What is three times two?", "Three times two is six."),
    ("day_mon", "What day comes after Monday?", "The day after Monday is Tuesday."),
    ("day_wed", "What day comes after Wednesday?", "The day after Wednesday is Thursday."),
    ("day_sat", "What day comes after Saturday?", "The day after Saturday is Sunday."),
    ("day_sun", "What day comes after Sunday?", "The day after Sunday is Monday."),
    ("mon_mar", "What month comes after March?", "The month after March is April."),
    ("mon_jun", "What month comes after June?", "The month after June is July."),
    ("mon_nov", "What month comes after November?", "The month after November is December."),
    ("cnt_week", "How many days are in a week?", "There are seven days in a week."),
    ("cnt_year", "How many months are in a year?", "There are twelve months in a year."),
    ("legs_spider", "How many legs does a spider have?", "A spider has eight legs."),
    ("legs_dog", "How many legs does a dog have?", "A dog has four legs."),
    ("legs_bird", "How many legs does a bird have?", "A bird has two legs."),
    ("legs_insect", "How many legs does an insect have?", "An insect has six legs."),
    ("snd_cow", "What sound does a cow make?", "A cow says moo."),
    ("snd_dog", "What sound does a dog make?", "A dog says woof."),
    ("snd_cat", "What sound does a cat make?", "A cat says meow."),
    ("opp_hot", "What is the opposite of hot?", "The opposite of hot is cold."),
    ("opp_up", "What is the opposite of up?", "The opposite of up is down."),
    ("opp_day", "What is the opposite of day?", "The opposite of day is night."),
    ("opp_fast", "What is the opposite of fast?", "The opposite of fast is slow."),
    ("misc_bees", "What do bees make?", "Bees make honey."),
    ("misc_ice", "What is frozen water called?", "Frozen water is called ice."),
    ("misc_planet", "Which planet do we live on?", "We live on the planet Earth."),
    ("misc_sun", "What rises in the east every morning?", "The sun rises in the east."),
]

VAL: list[tuple[str, str, str]] = [
    ("cap_japan", "What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("cap_poland", "What is the capital of Poland?", "The capital of Poland is Warsaw."),
    ("col_lemon", "What color is a lemon?", "A lemon is yellow."),
    ("math_3p4", "What is three plus four?", "Three plus four is seven."),
    ("day_fri", "What day comes after Friday?", "The day after Friday is Saturday."),
    ("legs_cat", "How many legs does a cat have?", "A cat has four legs."),
    ("opp_big", "What is the opposite of big?", "The opposite of big is small."),
    ("snd_duck", "What sound does a duck make?", "A duck says quack."),
]


def splits() -> dict[str, list[tuple[str, str, str]]]:
    ids = [i for i, _, _ in TRAIN + VAL]
    if len(ids) != len(set(ids)):
        raise ValueError("omni_ds.realsmall.qa: duplicate ids")
    return {"train": TRAIN, "val": VAL}
