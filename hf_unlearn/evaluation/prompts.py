"""The library's one prompt convention for questions: what answer scoring, greedy answering, concept locating and
concept validation all use unless told otherwise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The default question prompt.
DEFAULT_PROMPT_TEMPLATE = "Question: {q}\nAnswer:"
#: ConceptVectors' own prompt (a space before "Answer:"), to reproduce its numbers.
CONCEPTVECTORS_PROMPT_TEMPLATE = "Question: {q}\n Answer:"


def render_prompts(
    tokenizer: Any,
    questions: Sequence[str],
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    chat: bool = False,
    system_prompt: str | None = None,
) -> list[str]:
    """Each question in ``prompt_template`` (``"{q}"`` sends it verbatim); with ``chat=True`` that text is the user
    turn of the tokenizer's chat template, after an optional system prompt, ending with the assistant's header.

    Example:
        >>> render_prompts(tokenizer, ["Who wrote Hamlet?"])
        ['Question: Who wrote Hamlet?\nAnswer:']
    """
    if "{q}" not in prompt_template:
        raise ValueError(f"prompt_template must contain '{{q}}', got {prompt_template!r}")
    prompts = [prompt_template.format(q=q) for q in questions]
    if not chat:
        return prompts
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat=True but the tokenizer has no chat_template; set one or pass chat=False")
    rendered = []
    for prompt in prompts:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered
