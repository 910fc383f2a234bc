"""A tiny LLaMA-style SentencePiece tokenizer for the demo bundle, plus its HF fast twin.

The real PandaGPT uses LLaMA's tokenizer.model (BPE, byte fallback, split digits). The
demo trains a ~2k-piece model with the same settings on a corpus generated in code, so
the serving code (sentencepiece for prompts, HF tokenizer.json for vLLM) is exercised
exactly as with the real weights.
"""

from __future__ import annotations

import functools
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import sentencepiece as spm

VOCAB_SIZE = 2000
UNK, BOS, EOS = "<unk>", "<s>", "</s>"
# The corpus is the tokenizer's "language": fixed, so every seed shares one vocabulary
# and only the weights change with the seed.
_CORPUS_SEED = 1234
_CORPUS_LINES = 6000


def _words(*lines: str) -> tuple[str, ...]:
    return tuple(" ".join(lines).split())


COLOURS = _words(
    "red green blue yellow orange purple pink brown black white gray grey violet indigo",
    "cyan magenta teal maroon navy olive silver golden beige turquoise crimson scarlet",
    "emerald amber ivory lavender",
)
SHAPES = _words(
    "circle square triangle rectangle star heart hexagon pentagon octagon oval diamond",
    "cube sphere cone cylinder pyramid ring line arrow cross spiral crescent",
)
OBJECTS = _words(
    "panda cat dog bird horse cow sheep lion tiger bear rabbit fish duck frog elephant",
    "monkey car bus train plane boat bicycle tree flower house chair table lamp cup",
    "ball book phone clock guitar piano drum bell river mountain beach road bridge",
    "window door kite balloon apple banana orange cake bottle",
)
SIZES = _words("small large tiny huge big little tall short long wide narrow thin")
POSITIONS = _words(
    "left right top bottom center middle corner edge above below behind beside near",
    "under over inside outside between around front back",
)
COUNTS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen",
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty several many few",
)
SOUNDS = _words(
    "barking meowing chirping singing ringing ticking humming buzzing splashing",
    "roaring whistling clapping laughing talking music rain thunder wind engine",
)
VERBS = _words(
    "sitting standing running jumping flying swimming sleeping eating playing",
    "walking resting floating rolling shining moving waiting looking",
)
SCENES = _words(
    "park kitchen street forest garden room field lake sky city farm beach desert",
    "snow night morning evening sunset",
)
TEXTURES = _words(
    "bright dark pale shiny glossy matte soft rough smooth striped spotted dotted",
    "checkered wooden metallic glass plastic paper fluffy furry wet dry warm cold",
    "sunny cloudy rainy foggy quiet noisy loud gentle happy sleepy curious friendly",
    "colourful transparent blurry sharp faded vivid",
)
ACTIONS = _words(
    "holding carrying pushing pulling chasing following watching climbing dancing",
    "drawing painting reading writing building throwing catching kicking riding",
    "driving opening closing hiding searching pointing smiling crying waving",
)
# Invented proper names (CV syllables) give the BPE trainer enough distinct, frequent
# letter pairs to fill ~2k merges. With English words alone the trainer runs out of
# real merges and pads the vocabulary with zero-frequency pairs, one of them "###",
# which would make "\n###" encode as <0x0A> ### instead of LLaMA's <0x0A> ## #.
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
MODALITY_TAGS = ("<Img></Img>", "<Img> </Img>")
QUESTIONS = (
    "What colour is the {shape}?",
    "How many {obj}s are there?",
    "Where is the {colour} {shape}?",
    "Describe this image.",
    "Describe this image in detail.",
    "What is in the picture?",
    "What do you hear in this audio?",
    "What is happening in this video?",
    "Can you tell me what the {obj} is doing?",
    "Is there a {colour} {obj} in the {scene}?",
    "Which shape is on the {position}?",
    "Count the {shape}s, please.",
    "What sound does the {obj} make?",
    "Tell me a story about the {size} {obj}.",
    "Who is {name}?",
    "Is the {texture} {obj} {action} the {obj2}?",
)
ANSWERS = (
    "The {shape} is {colour}.",
    "There are {count} {obj}s in the {scene}.",
    "The {colour} {shape} is at the {position} of the image.",
    "I see a {size} {colour} {obj} {verb} near the {shape}.",
    "This image shows {count} {colour} {shape}s on a {colour2} background.",
    "A {obj} is {verb} in the {scene}, and the sound of {sound} can be heard.",
    "In the {scene}, a {size} {obj} is {verb} {position} a {colour} {shape}.",
    "Yes, there is a {colour} {obj} {position} the {obj2}.",
    "The {obj} makes a sound like {sound}.",
    "I can count {number} {shape}s: {number2} are {colour} and the rest are {colour2}.",
    "Once upon a time, a {size} {obj} lived in a {colour} {scene}. It loved {sound}!",
    "{name} the {obj} is {action} a {texture} {shape}.",
    "A {texture} {colour} {obj} named {name} is {action} the {obj2} in the {scene}.",
    "It is a {texture} {scene}; {name} and {name2} are {verb} {position} the {obj}.",
)
# Markdown-ish and punctuation-heavy lines keep `##`, `#`, brackets and digits in the
# vocabulary the way web text does for LLaMA.
EXTRAS = (
    "## {Colour} {shape}s",
    "# Notes about the {obj}",
    "## Step {number}: find the {shape}",
    "- item {number}: {colour} {obj} ({size})",
    "{Obj}, {obj2}; {obj}... {obj2}? {obj}! \"{colour}\" '{shape}'",
    "x = {number} + {number2} * ({number} - {number2}) / 2",
    "[{colour}] {{{shape}}} <{obj}> #{number} @{scene} $ {number}.{number2} % & |",
    "Image {number} of {number2}: {colour}, {shape}, {position}.",
)


def _name(rng: random.Random) -> str:
    # Skewed draws from a fixed pool: names recur often enough to become merges.
    pool = _name_pool()
    return pool[int(rng.random() ** 1.5 * len(pool))]


@functools.cache
def _name_pool(size: int = 500) -> tuple[str, ...]:
    rng = random.Random(_CORPUS_SEED + 1)
    return tuple("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))).capitalize() for _ in range(size))


def _fill(template: str, rng: random.Random) -> str:
    values = {
        "colour": rng.choice(COLOURS),
        "colour2": rng.choice(COLOURS),
        "shape": rng.choice(SHAPES),
        "obj": rng.choice(OBJECTS),
        "obj2": rng.choice(OBJECTS),
        "size": rng.choice(SIZES),
        "position": rng.choice(POSITIONS),
        "count": rng.choice(COUNTS),
        "sound": rng.choice(SOUNDS),
        "verb": rng.choice(VERBS),
        "scene": rng.choice(SCENES),
        "number": str(rng.randint(0, 2024)),
        "number2": str(rng.randint(0, 99)),
        "texture": rng.choice(TEXTURES),
        "action": rng.choice(ACTIONS),
        "name": _name(rng),
        "name2": _name(rng),
    }
    values["Colour"] = values["colour"].capitalize()
    values["Obj"] = values["obj"].capitalize()
    return template.format(**values)


def _conversation(rng: random.Random) -> str:
    """One PandaGPT v0 exchange: `### Human: <Img></Img> q\\n### Assistant: a\\n###`."""
    question = _fill(rng.choice(QUESTIONS), rng)
    answer = _fill(rng.choice(ANSWERS), rng)
    return f"### Human: {rng.choice(MODALITY_TAGS)} {question}\n### Assistant: {answer}\n###"


def corpus_lines() -> Iterator[str]:
    """The training corpus, one sentence per item, never containing a newline.

    Multi-line conversations are split on "\\n" so "\\n" never becomes a piece: like
    LLaMA it must encode through byte fallback as <0x0A>, making "\\n###" -> <0x0A> ## #.
    """
    rng = random.Random(_CORPUS_SEED)
    for i in range(_CORPUS_LINES):
        kind = i % 4
        if kind == 0:
            text = _conversation(rng)
        elif kind == 1:
            text = _fill(rng.choice(EXTRAS), rng)
        else:
            text = _fill(rng.choice(ANSWERS), rng)
        yield from text.split("\n")


def train_sentencepiece(vocab_size: int = VOCAB_SIZE) -> bytes:
    """Train with LLaMA's trainer settings and return the serialized model proto."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus_lines(),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece=UNK,
        bos_piece=BOS,
        eos_piece=EOS,
        # Determinism: one thread, no sentence sampling/shuffling.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        allow_whitespace_only_pieces=True,
        max_sentencepiece_length=16,
        minloglevel=2,
    )
    return model.getvalue()


def write_hf_tokenizer(llm_dir: Path, sp_model: bytes) -> None:
    """Write tokenizer.model and the HF fast tokenizer files (tokenizer.json) into llm_dir.

    transformers 5 has no slow LLaMA tokenizer: AutoTokenizer converts tokenizer.model
    to a fast tokenizer when tokenizer_config.json names LlamaTokenizer with legacy=True
    (LLaMA-1/Vicuna v0 behaviour). save_pretrained then emits tokenizer.json for vLLM.
    """
    from transformers import AutoTokenizer

    llm_dir.mkdir(parents=True, exist_ok=True)
    (llm_dir / "tokenizer.model").write_bytes(sp_model)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": True,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": None,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
    }
    (llm_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    tokenizer.save_pretrained(str(llm_dir))
    _tidy_tokenizer_config(llm_dir / "tokenizer_config.json")


def _tidy_tokenizer_config(path: Path) -> None:
    """Drop loader state that save_pretrained leaks into the config; keep `legacy`.

    is_local/local_files_only describe how *this* process loaded the files, not the
    tokenizer. `legacy: true` is restored for readers that convert tokenizer.model
    themselves; the fast tokenizer in tokenizer.json is unaffected by it.
    """
    config = json.loads(path.read_text())
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    config["legacy"] = True
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def stop_token_id(sp: spm.SentencePieceProcessor) -> int:
    """The id of `##`: PandaGPT's turns end with "\\n###" = <0x0A> ## #, and generating
    `##` is where it stops (2277 in LLaMA's vocabulary)."""
    pieces = sp.encode("\n###", out_type=str)
    if pieces[-3:] != ["<0x0A>", "##", "#"]:
        raise ValueError(f'tokenizer splits "\\n###" as {pieces}, expected [..., <0x0A>, ##, #]')
    return sp.piece_to_id("##")
