"""A small byte-level BPE tokenizer trained on the world's own text.

One tokenizer per world (preset + seed), shared by the target and every oracle, trained on all
the text the world can produce: every question form, answer, paraphrased and perturbed answer,
biography and utility fact, rendered in the default prompt format. Holdout people are included,
so their names tokenise like everyone else's; no model is trained on them, only the vocabulary.

Special tokens follow the Llama convention the models use: `<pad>`=0, `<s>`=1 (BOS, added by the
post-processor), `</s>`=2 (EOS), `<unk>`=3. Byte-level BPE never needs `<unk>`, but it is there
for tools that expect one. Saved with `PreTrainedTokenizerFast.save_pretrained`, so
`AutoTokenizer.from_pretrained(dir)` loads it.
"""

from __future__ import annotations

from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from obliviate.models.prompts import DEFAULT_FORMAT
from obliviate.world.generator import World

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def world_corpus(world: World) -> Iterator[str]:
    """Every text the world can produce, in the prompt format used for training and scoring."""
    facts = [*world.facts([p.pid for p in world.people]), *world.places, *world.things]
    for fact in facts:
        for question in (*fact.train_questions, *fact.heldout_questions):
            yield DEFAULT_FORMAT.render(question) + DEFAULT_FORMAT.answer_text(fact.value)
        yield " ".join([fact.paraphrased_answer, *fact.perturbed_answers])
    for passage in world.passages([p.pid for p in world.people]):
        yield passage.text


def train_tokenizer(world: World, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens on `world_corpus(world)` (deterministic)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(world_corpus(world), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    assert [fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    return fast
