"""Agentic LLM Unlearning (ALU): unlearning by agents at inference time, with no weight change.

Sanyal & Mandal 2025, *Agents Are All You Need for LLM Unlearning* (COLM 2025; code
`respailab/agentic-llm-unlearning`). Four agents, each an instruction model prompted for one step,
answer a query q about a set of unlearning targets T:

    r₀ = Vanilla(q)                                    the model's own answer
    T_q = AuditErase.identify(q, r₀, T)                the targets that q or r₀ concern
    r₀                                                 if T_q = ∅
    r₁..r_k = AuditErase.rewrite(q, r₀, T)             k rewrites of r₀ with every target removed
    s_i = Critic(q, r_i, T) ∈ [1, 5]                   how well r_i forgets T and still answers q
    J = the j rewrites with the highest s_i
    Composer(J, T)                                     if mean_{i∈J} s_i ≥ τ, else a refusal

The targets T are the forget items' subjects (`targets` adds names). The inference rule lives in
`interventions/agents.py`; `build` here only collects the targets.

Defaults, from the authors' code: k = 5 rewrites (`NUM_FORGET_RESPONSES`), j = 3 (`NUM_CRITIC_SAMPLES`),
τ = 4.0 (`CRITIC_RATING_THRESHOLD`); below τ the answer is their refusal sentence. Their agents are
GPT-4o (a small local model may serve the first check only); their few-shot prompt files are not in
the repository, so the critic's prompt here is written from the paper's description, and the
rewrite and composer prompts follow the code's system prompts.

Differs from the reference, because every agent here is the model being unlearned (ALU is
model-agnostic, and SmolLM2-135M-Instruct is the instruction model this project runs offline):
- **identify**: the targets are found by matching their names (and each name's last word, e.g.
  "Einstein") as whole words in the query and in the vanilla answer, not by prompting an agent: a
  135M model cannot tell reliably whether a text concerns a person;
- **rewrite**: the k rewrites are k samples (temperature 0.7, top-p 0.9) of one prompt, where the
  authors ask GPT-4o once for k variations in a structured output;
- **critic**: a rewrite that states a target's name or, with `check_answers`, one of the forget
  answers (`meta.aliases`, else the answer) gets the lowest rating, 1; any other gets the model's
  expected rating, Σ_d d·p(d) over the tokens of 1..5 after "Rating:", where the authors' critic
  writes its reasoning and GPT-4o parses the ratings out of it. On SmolLM2-135M-Instruct that
  expectation stays between about 2.7 and 3.9 whatever the rewrite, so with τ = 4 every query the
  audit flags ends in the refusal; the composer runs only with a lower τ.
Only generation changes: scoring a given answer (probabilities, truth ratio, MIA) sees the untouched
model, because ALU has no likelihood of its own; read its effect on generation-based metrics.

It needs an instruction model with a chat template; on the built-in world's models (plain text,
no chat template) it does not apply and says so. On SmolLM2-135M-Instruct with the `real_facts` task
(`scripts/real_model.py --methods alu`, docs/real_model.md) forget answer recall falls from 1.00 to
0.00 and reworded recall from 0.81 to 0.05, with the neighbours' and general facts' answers unchanged.
"""

from __future__ import annotations

from pydantic import Field

from obliviate.data.schema import subject_name
from obliviate.errors import ConfigError
from obliviate.interventions.agents import AgentPipeline, rating_tokens
from obliviate.interventions.regions import PromptReader
from obliviate.methods.base import MethodConfig
from obliviate.methods.inference import InterventionMethod, item_kind

REFUSAL = "I'm sorry, but I cannot provide a reliable answer on this topic while adhering to my safety guidelines."
NOT_CHAT = ("alu needs an instruction model with a chat template (its agents are prompted), and this tokenizer has "
            "none; the built-in world's models are not instruction models, so ALU does not apply to them")


class ALUConfig(MethodConfig):
    n_responses: int = Field(5, ge=1, description="k, rewrites of a flagged answer (the authors' code: 5)")
    top_j: int = Field(3, ge=1, description="j, top-rated rewrites the composer merges (the authors' code: 3)")
    rating_threshold: float = Field(4.0, ge=1, le=5, description="τ: below this mean rating of the top j the "
                                    "answer is a refusal (the authors' code: 4.0)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of the rewrites")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling of the rewrites")
    targets: list[str] = Field([], description="names to forget, added to the forget items' subjects")
    surnames: bool = Field(True, description="the audit also matches each target's last word (\"Einstein\")")
    check_answers: bool = Field(True, description="the critic rates 1 a rewrite that states a forget answer")
    refusal: str = Field(REFUSAL, description="the answer when the rewrites do not pass the critic")


def _last_word(name: str) -> str | None:
    words = name.split()
    last = words[-1] if len(words) > 1 else None
    return last if last and last[:1].isupper() and len(last) >= 3 else None


def audit_terms(subjects: list[str], surnames: bool) -> list[str]:
    """The names the audit looks for: each target, and its last word when `surnames`."""
    terms = list(subjects)
    if surnames:
        terms += [w for w in map(_last_word, subjects) if w]
    return list(dict.fromkeys(terms))


class ALU(InterventionMethod):
    name = "alu"
    paper = "Sanyal & Mandal 2025, Agents Are All You Need for LLM Unlearning"
    summary = "agents audit each answer for the targets, rewrite it, rate the rewrites and compose or refuse"
    Config = ALUConfig
    needs_chat = True

    def build(self, model, tokenizer, forget, retain, out_dir, progress, resume):
        from obliviate.data.tasks import item_aliases
        from obliviate.models.prompts import format_of

        cfg = self.config
        item_kind(forget, self.name)
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(NOT_CHAT)
        rating_tokens(tokenizer)  # the critic's rating tokens exist, or a one-line error now
        subjects = list(dict.fromkeys([*filter(None, map(subject_name, forget)), *cfg.targets]))
        if not subjects:
            raise ConfigError("alu: the forget items name no subject; give the names to forget with targets=[...]")
        audit = audit_terms(subjects, cfg.surnames)
        leak = audit + ([a for it in forget for a in item_aliases(it)] if cfg.check_answers else [])
        fmt = format_of(tokenizer)
        reader = PromptReader.for_items(tokenizer, fmt, [it.question for it in forget])
        pipeline = AgentPipeline(subjects, audit, list(dict.fromkeys(leak)), reader, cfg.n_responses, cfg.top_j,
                                 cfg.rating_threshold, cfg.temperature, cfg.top_p, cfg.seed, cfg.refusal)
        return pipeline, {"subjects": subjects, "audit_terms": len(audit), "leak_terms": len(pipeline.leak_terms)}
