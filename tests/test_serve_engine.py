"""The model holder: greedy text as `generate_greedy` gives it; LoRA adapters swapped in, the base kept."""

from __future__ import annotations

import threading

import torch

from obliviate.serve.engine import Engine, Outcome, Sampling

QUESTION = "Who wrote the book about the blue whale?"


def _adapter(model, out, seed: int):
    """A LoRA adapter on a copy of `model` with random (non-zero) B matrices, saved to `out`."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                             "lm_head"]))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2.0)
    peft.save_pretrained(out)
    return peft.eval()


def test_greedy_text_matches_the_batch_generator(tiny_llama, tiny_tokenizer):
    from obliviate.models.generation import generate_answers

    engine = Engine(tiny_llama, tiny_tokenizer, "tiny")
    text, outcome = engine.complete(engine.chat_ids([{"role": "user", "content": QUESTION}]),
                                    Sampling(max_tokens=12, stop=engine.chat_stops()))
    assert text.strip() == generate_answers(tiny_llama, tiny_tokenizer, [QUESTION], max_new_tokens=12)[0]
    assert outcome.completion_tokens <= 12 and outcome.finish_reason in ("stop", "length")
    sampled = {engine.complete(engine.text_ids("The quick"), Sampling(8, temperature=1.5, seed=s))[0]
               for s in range(6)}
    assert len(sampled) > 1  # temperature > 0 samples


def test_adapters_swap_in_place_without_reloading_the_base(tiny_llama, tiny_tokenizer, tmp_path):
    from obliviate.models.generation import generate_answers

    base_state = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    plain = generate_answers(tiny_llama, tiny_tokenizer, [QUESTION], max_new_tokens=10)[0]
    one = generate_answers(_adapter(tiny_llama, tmp_path / "a1", 1), tiny_tokenizer, [QUESTION], max_new_tokens=10)[0]
    two = generate_answers(_adapter(tiny_llama, tmp_path / "a2", 2), tiny_tokenizer, [QUESTION], max_new_tokens=10)[0]
    assert len({plain, one, two}) == 3  # the adapters change what the model says

    engine = Engine(tiny_llama, tiny_tokenizer, "tiny")
    ids = engine.chat_ids([{"role": "user", "content": QUESTION}])
    say = lambda: engine.complete(ids, Sampling(10, stop=engine.chat_stops()))[0].strip()  # noqa: E731
    assert say() == plain
    assert engine.swap(1, tmp_path / "a1", ["r1"]) and say() == one
    assert not engine.swap(1, tmp_path / "a1", ["r1"])  # the same version: nothing to do
    assert engine.swap(2, tmp_path / "a2", ["r1", "r2"]) and say() == two
    assert engine.base is tiny_llama  # the base object was kept, not reloaded
    assert list(engine.model.peft_config) == ["v2"]  # the old adapter was deleted
    assert engine.request_ids == ["r1", "r2"] and engine.version == 2
    assert engine.swap(3, None) and say() == plain  # back to the base alone
    for k, v in engine.model.get_base_model().state_dict().items():
        if "lora" not in k and "base_layer" not in k:
            assert torch.equal(v, base_state[k]), k


def test_a_swap_waits_for_a_running_generation(tiny_llama, tiny_tokenizer, tmp_path):
    """No generation sees a half-swapped model: the swap takes the lock a generation holds to its end."""
    _adapter(tiny_llama, tmp_path / "a1", 1)
    engine = Engine(tiny_llama, tiny_tokenizer, "tiny")
    expected = engine.complete(engine.text_ids("The quick"), Sampling(6))[0]
    outcome = Outcome()
    stream = engine.stream(engine.text_ids("The quick"), Sampling(6), lambda: None, outcome)
    first = next(stream)  # the generation now holds the lock
    swapped = threading.Event()
    thread = threading.Thread(target=lambda: (engine.swap(1, tmp_path / "a1"), swapped.set()))
    thread.start()
    assert not swapped.wait(0.5)
    rest = "".join(stream)
    thread.join(30)
    assert swapped.is_set() and engine.version == 1
    assert first + rest == expected  # the whole stream came from the base
    assert engine.complete(engine.text_ids("The quick"), Sampling(6))[0] != expected  # later ones: the adapter
